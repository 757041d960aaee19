"""Mistake (options together): checkpoint_sequential takes an nn.Sequential only (functions.children()): a
list of callables, which the signature allows, raises AttributeError."""

from pathlib import Path

import torch  # noqa: F401
import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "nn.Sequential or a list, every segment count, frozen input and dropout together":
        ["functions='list'", "list of callables"],
}


def checkpoint_sequential(functions, segments, input):
    return _solution.checkpoint_sequential(nn.Sequential(*functions.children()), segments, input)  # BUG


checkpoint, checkpoint_non_reentrant = _solution.checkpoint, _solution.checkpoint_non_reentrant

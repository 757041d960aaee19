"""Mistake (options together): segments=1 takes a shortcut, functions(input): right for an nn.Sequential
(callable), a TypeError for a list of callables; every other segment count is right for both."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "nn.Sequential or a list, every segment count, frozen input and dropout together":
        ["functions='list' and segments=1", "a list is not callable"],
}


def checkpoint_sequential(functions, segments, input):
    if segments == 1:
        return functions(input)  # BUG: only an nn.Sequential can be called; run each function in turn
    return _solution.checkpoint_sequential(functions, segments, input)


checkpoint, checkpoint_non_reentrant = _solution.checkpoint, _solution.checkpoint_non_reentrant

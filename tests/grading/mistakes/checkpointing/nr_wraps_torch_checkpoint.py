"""Mistake: checkpoint_non_reentrant delegates to torch.utils.checkpoint(use_reentrant=False). Every
behaviour check passes (it is the reference), but the exercise was to build it."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

from torch.utils.checkpoint import checkpoint as _torch_checkpoint  # noqa: E402

CAUGHT_BY = {
    "checkpoint_non_reentrant is built from scratch (no torch.utils.checkpoint)": ["delegates to torch.utils.checkpoint"],
}


def checkpoint_non_reentrant(fn, *args, preserve_rng_state=True, **kwargs):
    return _torch_checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state, **kwargs)


checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential

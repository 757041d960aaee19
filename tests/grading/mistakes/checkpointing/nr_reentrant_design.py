"""Mistake: Exercise 2.1's reentrant design handed in for 2.3 (an autograd.Function with a nested backward).
Its gradients are right, but torch.autograd.grad cannot reach the parameters inside, and a hook on a parameter
used inside and outside fires twice."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "torch.autograd.grad reaches the parameters inside fn": ["reentrant design", "saved_tensors_hooks"],
    "a parameter used inside and outside fn: its hook fires once": ["fired 2 times", "reentrant design"],
    "every dropout, autocast dtype, frozen input and gradient API together":
        ["gradients='autograd.grad'"],
}

checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint  # BUG: the same design as 2.1, not saved-tensor hooks

"""Mistake: no check that fn is callable. checkpoint(3, x) fails deep inside autograd with
"'int' object is not callable", an error that does not say which argument was wrong."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "a non-callable fn raises a clear error": ["no input validation"],
}


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    tensors = list(args)  # BUG: no callable(fn) check (this version takes tensor positional args only)
    anchor = None if any(t.requires_grad for t in tensors) else torch.empty(0, requires_grad=True)
    return _solution.CheckpointFunction.apply(lambda *ts: fn(*ts, **kwargs), preserve_rng_state, anchor, *tensors)


checkpoint_sequential = _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

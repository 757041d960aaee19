"""Mistake: the hooks are installed, but pack returns the tensor itself (and unpack gives it back): the
gradients are right and nothing is recomputed, because nothing was dropped. No memory is saved."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "forward keeps only the inputs (the allocator's view)": ["keeps what fn saves anyway", "index"],
    "every dropout, autocast dtype, frozen input and gradient API together":
        ["the allocator holds"],
}


def checkpoint_non_reentrant(fn, *args, preserve_rng_state=True, **kwargs):
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):  # BUG: pack keeps the tensor
        return fn(*args, **kwargs)


checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential

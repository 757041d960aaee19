"""Mistake: the recompute does not restore the forward's RNG state: dropout draws another mask, and the
saved mask no longer matches the output (same forward, wrong gradients)."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "dropout: the recompute draws the same mask": ["RNG not restored"],
    "every dropout, autocast dtype, frozen input and gradient API together":
        ["exactly those with dropout=0.5"],
}


def _recompute(fn, args, kwargs, rng, autocast, saved):
    same = [v.detach().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v for v in args]
    with torch.enable_grad(), _solution._Autocast(autocast), \
            torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(*same, **kwargs)  # BUG: no torch.set_rng_state(rng) first


_solution._recompute = _recompute  # the solution's checkpoint_non_reentrant calls it
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

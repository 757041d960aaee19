"""Mistake: the recompute runs with grad mode as backward leaves it: off. Nothing is saved, so the indices the
forward handed out point nowhere."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "output and gradients equal a direct run": ["fewer tensors", "torch.enable_grad()"],
}


def _recompute(fn, args, kwargs, rng, autocast, saved):
    same = [v.detach().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v for v in args]
    with torch.random.fork_rng(devices=[], enabled=rng is not None):
        if rng is not None:
            torch.set_rng_state(rng)
        with _solution._Autocast(autocast), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn(*same, **kwargs)  # BUG: no torch.enable_grad(): backward runs with grad mode off


_solution._recompute = _recompute  # the solution's checkpoint_non_reentrant calls it
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

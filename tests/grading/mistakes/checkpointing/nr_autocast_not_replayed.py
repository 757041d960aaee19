"""Mistake: the recompute does not replay autocast: backward runs outside the autocast block, so the
recompute saves fp32 tensors where the forward saved 16-bit ones."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "autocast replayed (bf16 and fp16)": ["autocast state was not replayed"],
    "every dropout, autocast dtype, frozen input and gradient API together":
        ["autocast="],
}


def _recompute(fn, args, kwargs, rng, autocast, saved):
    same = [v.detach().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v for v in args]
    with torch.random.fork_rng(devices=[], enabled=rng is not None):
        if rng is not None:
            torch.set_rng_state(rng)
        with torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn(*same, **kwargs)  # BUG: no torch.autocast(...) as in the forward


_solution._recompute = _recompute  # the solution's checkpoint_non_reentrant calls it
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

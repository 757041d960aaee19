"""Mistake: the recompute makes every floating input require grad (the seed's habit). With an input that
does not require grad the recompute saves more tensors than the forward did (a Linear then keeps its weight
for the input's gradient), so the indices no longer match: wrong tensors, wrong gradients or a crash."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "frozen input: parameters get gradients, no anchor needed": ["requires_grad is as it was"],
    "every dropout, autocast dtype, frozen input and gradient API together":
        ["input='frozen'"],
}


def _recompute(fn, args, kwargs, rng, autocast, saved):
    same = [v.detach().requires_grad_(v.is_floating_point()) if torch.is_tensor(v) else v for v in args]  # BUG
    with torch.random.fork_rng(devices=[], enabled=rng is not None):
        if rng is not None:
            torch.set_rng_state(rng)
        with torch.enable_grad(), _solution._Autocast(autocast), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn(*same, **kwargs)


_solution._recompute = _recompute  # the solution's checkpoint_non_reentrant calls it
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

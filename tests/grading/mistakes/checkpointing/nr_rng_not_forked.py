"""Mistake: the RNG state is set back for the recompute outside torch.random.fork_rng(): the gradients are
right, but the caller's random stream is rewound and stays so after backward."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "the caller's RNG stream is left as it was after the recompute": ["RNG rewound", "fork_rng"],
}


def _recompute(fn, args, kwargs, rng, autocast, saved):
    same = [v.detach().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v for v in args]
    if rng is not None:
        torch.set_rng_state(rng)  # BUG: not inside torch.random.fork_rng()
    with torch.enable_grad(), _solution._Autocast(autocast), \
            torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(*same, **kwargs)


_solution._recompute = _recompute  # the solution's checkpoint_non_reentrant calls it
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

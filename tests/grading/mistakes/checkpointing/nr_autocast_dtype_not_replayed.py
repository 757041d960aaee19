"""Mistake (options together): the recompute replays that autocast was on, not its dtype (torch.autocast("cpu")
defaults to bf16). Right without autocast and under bf16; under fp16 the recompute saves bf16 tensors."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "autocast replayed (bf16 and fp16)": ["autocast state was not replayed", "dtype"],
    "every dropout, autocast dtype, frozen input and gradient API together":
        ["exactly those with autocast='fp16'", "dtype was not replayed"],
}


def _recompute(fn, args, kwargs, rng, autocast, saved):
    same = [v.detach().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v for v in args]
    enabled = autocast[0][1]
    with torch.random.fork_rng(devices=[], enabled=rng is not None):
        if rng is not None:
            torch.set_rng_state(rng)
        with torch.enable_grad(), torch.autocast("cpu", enabled=enabled), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn(*same, **kwargs)  # BUG: torch.autocast("cpu", dtype=autocast[0][2], enabled=enabled)


_solution._recompute = _recompute  # the solution's checkpoint_non_reentrant calls it
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

"""Mistake (options together): the path for inputs that do not require grad (the anchor) drops
preserve_rng_state. Right with dropout and an input that requires grad, right with a frozen input and no
dropout; with a frozen input and dropout the recompute draws another mask."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "every dropout, autocast dtype, frozen input, keyword tensor and output kind together":
        ["dropout=0.5 and input='frozen'", "the path with the anchor"],
}


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    tensors = [v for v in list(args) + list(kwargs.values()) if torch.is_tensor(v)]
    if callable(fn) and torch.is_grad_enabled() and not any(t.requires_grad for t in tensors):
        preserve_rng_state = False  # BUG: the anchor path is written apart, and the RNG is forgotten there
    return _checkpoint(fn, *args, preserve_rng_state=preserve_rng_state, **kwargs)


_checkpoint = _solution.checkpoint
_solution.checkpoint = checkpoint  # checkpoint_sequential uses it too
checkpoint_sequential = _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

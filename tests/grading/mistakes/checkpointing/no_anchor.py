"""Mistake: no anchor tensor. When no input requires grad (a frozen embedding's output feeding LoRA
layers), the Function's output is cut from the graph and the parameters inside get no gradient: the
trap of torch.utils.checkpoint(use_reentrant=True)."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "frozen input: parameters inside still get gradients": ["reentrant trap", "requires_grad=True"],
}


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    tensors = [a for a in args if torch.is_tensor(a)]
    others = [None if torch.is_tensor(a) else a for a in args]

    def run(*ts):
        it = iter(ts)
        return fn(*[next(it) if o is None and torch.is_tensor(a) else o for o, a in zip(others, args)], **kwargs)

    return _solution.CheckpointFunction.apply(run, preserve_rng_state, None, *tensors)  # BUG: anchor None


_solution.checkpoint = checkpoint
checkpoint_sequential = _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

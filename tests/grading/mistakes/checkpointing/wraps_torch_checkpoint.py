"""Mistake: checkpoint delegates to torch.utils.checkpoint. Every behaviour check passes (it is the reference),
but the exercise was to build it."""

from pathlib import Path

from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "checkpoint is built from scratch (no torch.utils.checkpoint)": ["delegates to torch.utils.checkpoint"],
}


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    return _torch_checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state, **kwargs)


_solution.checkpoint = checkpoint
checkpoint_sequential = _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

"""Mistake: keyword arguments are accepted but never passed on to fn (fn runs with its defaults)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "keyword and non-tensor arguments": ["keyword arguments were lost"],
}


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    return _solution_checkpoint(fn, *args, preserve_rng_state=preserve_rng_state)  # BUG: **kwargs dropped


_solution_checkpoint = _solution.checkpoint
_solution.checkpoint = checkpoint
checkpoint_sequential = _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

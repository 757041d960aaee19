"""Mistake: checkpoint builds the Function but forgets to return its output."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "returns what fn returns": ["returned None"],
}


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    _solution.checkpoint(fn, *args, preserve_rng_state=preserve_rng_state, **kwargs)  # BUG: no return


checkpoint_sequential = _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

"""Mistake: checkpoint_sequential splits the functions into segments but runs them all normally."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")
checkpoint = _solution.checkpoint

CAUGHT_BY = {
    "kept memory equals torch's (the last segment runs normally)": ["not checkpointed"],
}


def checkpoint_sequential(functions, segments, input):
    functions = list(functions)
    if not 1 <= segments <= len(functions):
        raise ValueError(f"segments must be between 1 and {len(functions)}, got {segments}")
    x = input
    for f in functions:  # BUG: no checkpoint() anywhere
        x = f(x)
    return x
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

"""Mistake: segments is not validated. segments=0 dies with ZeroDivisionError, segments=5 of 4 functions
with "range() arg 3 must not be zero": neither says what was wrong."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")
checkpoint = _solution.checkpoint

CAUGHT_BY = {
    "bad segments raise a clear error": ["no input validation"],
}


def checkpoint_sequential(functions, segments, input):
    functions = list(functions)
    n = len(functions)
    size = n // segments  # BUG: no check of segments
    x = input
    for start in range(0, size * (segments - 1), size):

        def run(h, chunk=functions[start:start + size]):
            for f in chunk:
                h = f(h)
            return h

        x = checkpoint(run, x)
    for f in functions[size * (segments - 1):]:
        x = f(x)
    return x
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

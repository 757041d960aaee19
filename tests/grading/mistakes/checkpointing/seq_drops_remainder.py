"""Mistake: checkpoint_sequential runs `segments` chunks of n // segments functions and forgets the
remainder: 10 functions in 3 segments run only 9."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")
checkpoint = _solution.checkpoint

CAUGHT_BY = {
    "output and gradients equal torch's checkpoint_sequential": ["left out", "remainder"],
}


def checkpoint_sequential(functions, segments, input):
    functions = list(functions)
    if not 1 <= segments <= len(functions):
        raise ValueError(f"segments must be between 1 and {len(functions)}, got {segments}")
    size = len(functions) // segments
    x = input
    for start in range(0, size * segments, size):  # BUG: functions[size * segments:] never run

        def run(h, chunk=functions[start:start + size]):
            for f in chunk:
                h = f(h)
            return h

        x = checkpoint(run, x) if start < size * (segments - 1) else run(x)
    return x
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

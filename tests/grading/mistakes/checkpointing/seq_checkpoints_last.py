"""Mistake: every segment is checkpointed, the last one too. Gradients are right, but this is not torch's
checkpoint_sequential (its last segment runs normally: backward starts there at once, so recomputing it
buys nothing)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")
checkpoint = _solution.checkpoint

CAUGHT_BY = {
    "kept memory equals torch's (the last segment runs normally)": ["last segment was checkpointed"],
}


def checkpoint_sequential(functions, segments, input):
    functions = list(functions)
    n = len(functions)
    if not 1 <= segments <= n:
        raise ValueError(f"segments must be between 1 and {n}, got {segments}")
    size = n // segments
    bounds = [(s, s + size) for s in range(0, size * (segments - 1), size)] + [(size * (segments - 1), n)]
    x = input
    for start, stop in bounds:

        def run(h, chunk=functions[start:stop]):
            for f in chunk:
                h = f(h)
            return h

        x = checkpoint(run, x)  # BUG: the last chunk too
    return x
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

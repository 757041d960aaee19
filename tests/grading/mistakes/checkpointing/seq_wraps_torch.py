"""Mistake: checkpoint_sequential delegates to torch's. Output, gradients and memory match (it is the
reference), but the exercise was to split and checkpoint the segments yourself."""

from pathlib import Path

from torch.utils.checkpoint import checkpoint_sequential as _torch_checkpoint_sequential

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")
checkpoint = _solution.checkpoint

CAUGHT_BY = {
    "checkpoint_sequential is built from scratch (no torch.utils.checkpoint)": ["delegates to torch.utils.checkpoint"],
}


def checkpoint_sequential(functions, segments, input):
    if not 1 <= segments <= len(functions):
        raise ValueError(f"segments must be between 1 and {len(functions)}, got {segments}")
    return _torch_checkpoint_sequential(functions, segments, input, use_reentrant=False)
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

"""Mistake: streaming_accumulation_step reads the whole stream first (list(micro_batches)) to count its tokens:
right gradient, but all k micro-batches are held at once."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "reads one micro-batch at a time (the next only after the previous one's backward)":
        ['read ahead'],
    'options together: autocast dtype x GradScaler x clipping x scheduler x generator or list':
        ['a generator', 'read ahead'],
}


def streaming_accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None,
                                scheduler=None, autocast_dtype=None):
    window = list(micro_batches)  # BUG: the whole window in memory, to count before the first forward
    if not window:
        raise ValueError("empty stream")
    return _solution.accumulation_step(model, optimizer, window, scaler=scaler, max_grad_norm=max_grad_norm,
                                       scheduler=scheduler, autocast_dtype=autocast_dtype)


accumulation_step = _solution.accumulation_step
GradientAccumulator = _solution.GradientAccumulator

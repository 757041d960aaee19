"""Mistake: streaming_accumulation_step divides each micro-batch's loss by the tokens read so far: the early
micro-batches weigh more than the late ones."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'a stream of unequal token counts: the gradient equals the full batch':
        ['running count'],
    "returns the stream's token-mean loss":
        ['token-mean loss'],
    'options together: autocast dtype x GradScaler x clipping x scheduler x generator or list':
        ['max |diff|'],
}


def streaming_accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None,
                                scheduler=None, autocast_dtype=None):
    optimizer.zero_grad(set_to_none=True)
    n_tokens, total = 0, 0.0
    for inputs, labels in micro_batches:
        n_tokens += int((labels != -100).sum())
        # BUG: the count so far, not the window's
        loss = _solution._summed_loss(model, optimizer, inputs, labels, autocast_dtype) / max(n_tokens, 1)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.item()
    if n_tokens == 0:
        optimizer.zero_grad(set_to_none=True)
        raise ValueError("no labelled position in the stream")
    _solution._finish_window(optimizer, scaler, max_grad_norm, scheduler)
    return total


accumulation_step = _solution.accumulation_step
GradientAccumulator = _solution.GradientAccumulator

"""Mistake: accumulation_step enters autocast only when a scaler is given (as if only fp16 needed it): bf16
without a scaler runs in fp32."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'options together: autocast dtype x GradScaler x clipping x scheduler x window':
        ['bf16 autocast + no scaler', 'ran in fp32'],
    'options together: autocast dtype x GradScaler x clipping x scheduler, every window':
        ['bf16 autocast + no scaler', 'ran in fp32'],
}

IGNORE_INDEX = -100


def accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None, scheduler=None,
                      autocast_dtype=None):
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ValueError("empty window: need at least one (inputs, labels) micro-batch")
    n_tokens = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in micro_batches)
    if n_tokens == 0:
        raise ValueError("the window has no labelled position (all labels are -100): its mean is 0/0")
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for inputs, labels in micro_batches:
        dtype = autocast_dtype if scaler is not None else None  # BUG: autocast tied to the scaler
        loss = _solution._summed_loss(model, optimizer, inputs, labels, dtype) / n_tokens
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.item()
    _solution._finish_window(optimizer, scaler, max_grad_norm, scheduler)
    return total


_solution.accumulation_step = accumulation_step  # the solution's GradientAccumulator calls this one


GradientAccumulator = _solution.GradientAccumulator
streaming_accumulation_step = _solution.streaming_accumulation_step

"""Mistake: accumulation_step clips only on the branch without a scaler: with a GradScaler, max_grad_norm is
dropped (fp32 without a scaler still clips)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'GradScaler + clipping: unscale_ before clipping':
        ['max_grad_norm ignored with a scaler'],
    'options together: autocast dtype x GradScaler x clipping x scheduler x window':
        ['GradScaler + max_grad_norm', 'max_grad_norm dropped'],
    'options together: autocast dtype x GradScaler x clipping x scheduler, every window':
        ['GradScaler + max_grad_norm', 'max_grad_norm dropped'],
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
        loss = _solution._summed_loss(model, optimizer, inputs, labels, autocast_dtype) / n_tokens
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.item()
    if scaler is not None:
        scaler.step(optimizer)  # BUG: no unscale_ + clip on this branch
        scaler.update()
    else:
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


_solution.accumulation_step = accumulation_step  # the solution's GradientAccumulator calls this one


GradientAccumulator = _solution.GradientAccumulator
streaming_accumulation_step = _solution.streaming_accumulation_step

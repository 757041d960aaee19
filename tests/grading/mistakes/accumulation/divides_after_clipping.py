"""Mistake: streaming_accumulation_step clips the summed gradient, then divides by the token count: the clip
sees a gradient n_tokens times too large, so the step is clipped n_tokens times too hard."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'options together: autocast dtype x GradScaler x clipping x scheduler x generator or list':
        ['max_grad_norm', 'clipped too early'],
}


def streaming_accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None,
                                scheduler=None, autocast_dtype=None):
    optimizer.zero_grad(set_to_none=True)
    n_tokens, total = 0, 0.0
    for inputs, labels in micro_batches:
        loss = _solution._summed_loss(model, optimizer, inputs, labels, autocast_dtype)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        n_tokens += int((labels != -100).sum())
        total += loss.item()
    if n_tokens == 0:
        optimizer.zero_grad(set_to_none=True)
        raise ValueError("no labelled position in the stream")
    if max_grad_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        # BUG: clipped before the division below
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.div_(n_tokens)
    _solution._finish_window(optimizer, scaler, None, scheduler)
    return total / n_tokens


accumulation_step = _solution.accumulation_step
GradientAccumulator = _solution.GradientAccumulator

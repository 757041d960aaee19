"""Mistake: streaming_accumulation_step divides by the count without checking it: a stream with no labelled
position (or none at all) steps with 0/0 = NaN gradients."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'bad input: an empty or unlabelled stream is an error, no step':
        ['no error'],
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
    # BUG: no check for n_tokens == 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.div_(n_tokens)
    _solution._finish_window(optimizer, scaler, max_grad_norm, scheduler)
    return total / max(n_tokens, 1)


accumulation_step = _solution.accumulation_step
GradientAccumulator = _solution.GradientAccumulator

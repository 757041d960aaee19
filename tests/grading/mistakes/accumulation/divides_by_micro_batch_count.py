"""Mistake: streaming_accumulation_step divides the summed gradients by the number of micro-batches read, not by
the labelled tokens counted."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'a stream of unequal token counts: the gradient equals the full batch':
        ['divided by the number of micro-batches'],
    "returns the stream's token-mean loss":
        ['token-mean loss'],
    'options together: autocast dtype x GradScaler x clipping x scheduler x generator or list':
        ['6 x the full-batch gradient'],
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
        n_tokens += 1  # BUG: counts micro-batches, not labelled tokens
        total += loss.item()
    if n_tokens == 0:
        raise ValueError("empty stream")
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.div_(n_tokens)
    _solution._finish_window(optimizer, scaler, max_grad_norm, scheduler)
    return total / n_tokens


accumulation_step = _solution.accumulation_step
GradientAccumulator = _solution.GradientAccumulator

"""Mistake: stochastic_round_to_bf16 picks either neighbour with probability 1/2: random, but biased (the
expected result is the midpoint, not x)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'unbiased: away from zero with probability (distance) / (gap)':
        ['fair coin'],
    'bf16 weights keep updates under half a bf16 step (on average)':
        ['biased rounding'],
}


def stochastic_round_to_bf16(x):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"expected a float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    bits = x.view(torch.int32)
    low = bits & 0xFFFF
    truncated = bits - low
    away = (low != 0) & (torch.rand(x.shape, device=x.device) < 0.5)  # BUG: 1/2, not low / 2^16
    rounded = torch.where(away, truncated + (1 << 16), truncated).view(torch.float32).bfloat16()
    return torch.where(x.isnan(), x.bfloat16(), rounded)


LossScaler = _solution.LossScaler
train_step = _solution.train_step

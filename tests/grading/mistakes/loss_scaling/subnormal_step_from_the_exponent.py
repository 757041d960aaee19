"""Mistake: stochastic_round_to_bf16 takes the bf16 step from x's exponent (2^(floor(log2|x|) - 7)): right for
normal values, too small for subnormals, whose step stays 2^-133; the final cast then rounds to nearest."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'unbiased: away from zero with probability (distance) / (gap)':
        ['subnormals', '2^-133'],
    'bf16 weights keep updates under half a bf16 step (on average)':
        ['subnormal', '2^-133'],
}


def stochastic_round_to_bf16(x):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"expected a float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    finite = torch.isfinite(x) & (x != 0)
    step = torch.exp2(torch.floor(torch.log2(x.abs())) - 7)  # BUG: below 2^-126 the step is 2^-133, not smaller
    step = torch.where(finite, step, torch.ones_like(x))
    toward = torch.trunc(x / step) * step
    chance = (x - toward).abs() / step
    rounded = torch.where(torch.rand_like(x) < chance, toward + torch.sign(x) * step, toward)
    return torch.where(finite, rounded, x).bfloat16()


LossScaler = _solution.LossScaler
train_step = _solution.train_step

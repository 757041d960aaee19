"""Mistake: stochastic_round_to_bf16 clears the low bits through x.view(torch.int32), which shares x's
memory: the caller's fp32 tensor is truncated as a side effect."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'every value becomes one of the two bf16 values around it (every kind of input)':
        ['x itself was changed', 'in place'],
}


def stochastic_round_to_bf16(x):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"expected a float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    was_nan = x.isnan()
    bits = x.view(torch.int32)
    low = bits & 0xFFFF
    bits -= low  # BUG: in place on a view of x
    draw = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)
    rounded = torch.where(draw < low, bits + (1 << 16), bits).view(torch.float32).bfloat16()
    return torch.where(was_nan, torch.tensor(float("nan"), dtype=torch.bfloat16), rounded)


LossScaler = _solution.LossScaler
train_step = _solution.train_step

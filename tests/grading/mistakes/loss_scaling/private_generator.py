"""Mistake: stochastic_round_to_bf16 draws from a torch.Generator of its own: random, but torch.manual_seed
no longer reproduces a run."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'torch.manual_seed reproduces a result':
        ['gave different results', 'default generator'],
}

_generator = torch.Generator()  # BUG: not torch's default generator


def stochastic_round_to_bf16(x):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"expected a float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    bits = x.view(torch.int32)
    low = bits & 0xFFFF
    truncated = bits - low
    draw = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, generator=_generator)
    rounded = torch.where(draw < low, truncated + (1 << 16), truncated).view(torch.float32).bfloat16()
    return torch.where(x.isnan(), x.bfloat16(), rounded)


LossScaler = _solution.LossScaler
train_step = _solution.train_step

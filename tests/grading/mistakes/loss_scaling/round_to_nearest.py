"""Mistake: stochastic_round_to_bf16 rounds to nearest (x.bfloat16()): deterministic, and every update under
half a bf16 step is lost."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'unbiased: away from zero with probability (distance) / (gap)':
        ['round to nearest'],
    'torch.manual_seed reproduces a result':
        ['gave the same result', 'no randomness'],
    'bf16 weights keep updates under half a bf16 step (on average)':
        ['updates were lost'],
}


def stochastic_round_to_bf16(x):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"expected a float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    return x.bfloat16()  # BUG: round to nearest even, no randomness


LossScaler = _solution.LossScaler
train_step = _solution.train_step

"""Mistake: stochastic_round_to_bf16 converts whatever it gets with x.float(): a float64 value is then
rounded twice (to fp32, then to bf16), and an integer tensor passes as if it were a value."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'TypeError for anything but a float32 tensor':
        ['float64 was accepted'],
}


def stochastic_round_to_bf16(x):
    return _solution.stochastic_round_to_bf16(torch.as_tensor(x).float())  # BUG: no type check


LossScaler = _solution.LossScaler
train_step = _solution.train_step

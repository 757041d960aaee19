"""Mistake: the constructor ignores init_scale and always starts at 2**16."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'scale(loss) multiplies by init_scale; get_scale() returns it': ['init_scale ignored']}


class LossScaler(_solution.LossScaler):
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        super().__init__(2.0**16, growth_factor, backoff_factor, growth_interval)  # BUG: init_scale dropped

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

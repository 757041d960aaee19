"""Mistake: no argument validation: growth_factor 1.0, backoff_factor 1.0, growth_interval 0 are accepted."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'bad arguments raise ValueError': ['no argument validation', 'growth_factor']}


class LossScaler(_solution.LossScaler):
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        # BUG: no checks at all
        self._scale, self.growth_factor, self.backoff_factor = float(init_scale), growth_factor, backoff_factor
        self.growth_interval, self._growth_tracker = growth_interval, 0
        self._found_inf = {}

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

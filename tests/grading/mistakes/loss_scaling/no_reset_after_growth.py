"""Mistake: the growth counter is not reset after growth: the scale then doubles every step."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'the growth counter resets after growth': ['not reset after growth']}


class LossScaler(_solution.LossScaler):
    def update(self):
        if any(self._found_inf.values()):
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker >= self.growth_interval:
                self._grow()  # BUG: no reset
        self._found_inf.clear()

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

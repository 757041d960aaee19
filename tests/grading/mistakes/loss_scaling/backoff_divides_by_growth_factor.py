"""Mistake: update() backs off by dividing by growth_factor: right for the defaults (2 and 1/2), wrong
for any other pair."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'growth_factor, backoff_factor and growth_interval together (equal to GradScaler)':
        ['backoff by 1/growth_factor'],
}


class LossScaler(_solution.LossScaler):
    def update(self):
        if not self._found_inf:
            raise RuntimeError("No inf checks were recorded prior to update(): call step() first")
        if any(self._found_inf.values()):
            self._scale /= self.growth_factor  # BUG: the inverse of growth_factor, not backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._grow()
                self._growth_tracker = 0
        self._found_inf.clear()


train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

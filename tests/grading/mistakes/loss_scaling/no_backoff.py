"""Mistake: update() grows the scale but never backs off on overflow."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'an overflow backs off the scale': ['no backoff on overflow']}


class LossScaler(_solution.LossScaler):
    def update(self):
        if not any(self._found_inf.values()):  # BUG: nothing happens on overflow
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._grow()
                self._growth_tracker = 0
        self._found_inf.clear()

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

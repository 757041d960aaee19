"""Mistake: step() always unscales, also after the caller's unscale_ (the gradients are divided twice)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'step after unscale_ does not unscale again': ['unscaling twice']}


class LossScaler(_solution.LossScaler):
    def step(self, optimizer):
        self._found_inf.pop(id(optimizer), None)  # BUG: unscale again whatever happened before
        self.unscale_(optimizer)
        if self._found_inf[id(optimizer)]:
            return False
        optimizer.step()
        return True

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

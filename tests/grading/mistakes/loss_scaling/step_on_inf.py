"""Mistake: step() calls optimizer.step() even when a gradient is inf/NaN (it still backs off)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'step skips the optimizer on inf/NaN': ['step taken on inf'],
 'a run with injected overflows equals torch.amp.GradScaler': ['skipped steps']}


class LossScaler(_solution.LossScaler):
    def step(self, optimizer):
        if id(optimizer) not in self._found_inf:
            self.unscale_(optimizer)
        optimizer.step()  # BUG: no check of found_inf
        return not self._found_inf[id(optimizer)]

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

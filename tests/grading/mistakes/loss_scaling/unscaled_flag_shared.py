"""Mistake: one 'unscaled' flag for every optimizer (the first draft in the notebook had it): unscale_(B) after
unscale_(A) raises as if it were a second call, and step(B) after unscale_(A) would not unscale B."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'two optimizers, param groups and parameters without .grad, together (equal to GradScaler)':
        ['unscale_(B) after unscale_(A)', 'per optimizer'],
}


class LossScaler(_solution.LossScaler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unscaled = False  # BUG: one flag, whichever optimizer was unscaled

    def unscale_(self, optimizer):
        if self._unscaled:
            raise RuntimeError("unscale_() has already been called since the last update()")
        super().unscale_(optimizer)
        self._unscaled = True

    def step(self, optimizer):
        if not self._unscaled:
            self.unscale_(optimizer)
        if any(self._found_inf.values()):
            return False
        optimizer.step()
        return True

    def update(self):
        super().update()
        self._unscaled = False


train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

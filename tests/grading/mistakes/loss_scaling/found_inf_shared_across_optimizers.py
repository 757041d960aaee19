"""Mistake: one found-inf flag for every optimizer: an overflow in one optimizer's gradients skips the others too."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'two optimizers, param groups and parameters without .grad, together (equal to GradScaler)':
        ['overflow in A', 'skipped B too'],
}


class LossScaler(_solution.LossScaler):
    def unscale_(self, optimizer):
        super().unscale_(optimizer)
        shared = any(self._found_inf.values())  # BUG: found-inf pooled over the optimizers unscaled so far
        for key in self._found_inf:
            self._found_inf[key] = shared


train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

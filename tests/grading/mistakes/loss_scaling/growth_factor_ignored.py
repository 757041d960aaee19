"""Mistake: the scale grows by 2, whatever growth_factor says (right for the default only)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'growth_factor, backoff_factor and growth_interval together (equal to GradScaler)':
        ['growth_factor ignored'],
}


class LossScaler(_solution.LossScaler):
    def _grow(self):
        grown = self._scale * 2.0  # BUG: the literal 2, not self.growth_factor
        if math.isfinite(float(torch.tensor(grown, dtype=torch.float32))):
            self._scale = grown


train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

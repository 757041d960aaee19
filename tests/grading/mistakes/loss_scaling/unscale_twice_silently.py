"""Mistake: a second unscale_ before update() divides the gradients again instead of raising."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'unscale_ twice before update() raises RuntimeError': ['did not raise', 'twice']}


class LossScaler(_solution.LossScaler):
    def unscale_(self, optimizer):
        self._found_inf.pop(id(optimizer), None)  # BUG: forgets that it already unscaled
        super().unscale_(optimizer)

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake: update() does nothing (the seed notes' `def update(self): pass`), the scale never moves."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'an overflow backs off the scale': ['update() does nothing']}


class LossScaler(_solution.LossScaler):
    def update(self):
        self._found_inf.clear()  # BUG: only resets the per-step bookkeeping

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake: step() returns nothing."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'step returns True when it stepped and False when it skipped': ['returned none', 'a bool']}


class LossScaler(_solution.LossScaler):
    def step(self, optimizer):
        super().step(optimizer)  # BUG: the result is dropped

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

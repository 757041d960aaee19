"""Mistake: load_state_dict() restores the scale and factors but restarts the growth count at 0."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"load_state_dict resumes mid-run (also from GradScaler's state_dict)": ['growth tracker was not restored']}


class LossScaler(_solution.LossScaler):
    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._growth_tracker = 0  # BUG

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

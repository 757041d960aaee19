"""Mistake: state_dict() saves the scale but not the growth tracker."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"state_dict has GradScaler's keys and values": ['_growth_tracker']}


class LossScaler(_solution.LossScaler):
    def state_dict(self):
        state = super().state_dict()
        del state["_growth_tracker"]  # BUG
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict({**state_dict, "_growth_tracker": state_dict.get("_growth_tracker", 0)})

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake: scale(loss) multiplies by a Python float: an fp16 loss stays fp16 and overflows at 65504."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'scale(loss) multiplies by init_scale; get_scale() returns it': ['python float', 'overflow']}


class LossScaler(_solution.LossScaler):
    def scale(self, loss):
        return loss * self._scale  # BUG: fp16 loss * 65536.0 is computed (and stored) in fp16

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

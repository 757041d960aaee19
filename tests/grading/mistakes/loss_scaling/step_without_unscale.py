"""Mistake: step() never unscales; it relies on the caller's unscale_ (the seed notes' GradScaler)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'step unscales when unscale_ was not called': ['step without unscaling']}


class LossScaler(_solution.LossScaler):
    def step(self, optimizer):
        if id(optimizer) not in self._found_inf:  # BUG: checks for inf but leaves the gradients scaled
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            self._found_inf[id(optimizer)] = not all(bool(torch.isfinite(g).all()) for g in grads)
        if self._found_inf[id(optimizer)]:
            return False
        optimizer.step()
        return True

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake: unscale_ multiplies the gradients by the scale instead of dividing."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'unscale_ divides the gradients by the scale (equal to GradScaler)': ['multiplied', 'instead of dividing']}


class LossScaler(_solution.LossScaler):
    @torch.no_grad()
    def unscale_(self, optimizer):
        if id(optimizer) in self._found_inf:
            raise RuntimeError("unscale_() has already been called")
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        found_inf = not bool(torch.stack(torch._foreach_norm(grads, math.inf)).isfinite().all())
        torch._foreach_mul_(grads, self._scale)  # BUG: should be 1 / scale
        self._found_inf[id(optimizer)] = found_inf

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

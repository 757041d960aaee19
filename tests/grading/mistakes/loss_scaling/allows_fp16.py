"""Mistake: unscale_ accepts fp16 gradients (fp16 parameters in the optimizer)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'fp16 gradients are refused (fp32 master weights)': ['fp16 parameters given to the optimizer']}


class LossScaler(_solution.LossScaler):
    @torch.no_grad()
    def unscale_(self, optimizer):
        if id(optimizer) in self._found_inf:
            raise RuntimeError("unscale_() has already been called")
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        # BUG: no fp16 check
        found_inf = not bool(torch.stack(torch._foreach_norm(grads, math.inf)).isfinite().all())
        torch._foreach_mul_(grads, 1.0 / self._scale)
        self._found_inf[id(optimizer)] = found_inf

train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake: unscale_ walks only the first param group: a second group's gradients stay scaled, and its
inf/NaN goes unseen."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'two optimizers, param groups and parameters without .grad, together (equal to GradScaler)':
        ['A with 2 param groups', 'second param group'],
}


class LossScaler(_solution.LossScaler):
    @torch.no_grad()
    def unscale_(self, optimizer):
        if id(optimizer) in self._found_inf:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update()")
        grads = [p.grad for p in optimizer.param_groups[0]["params"] if p.grad is not None]  # BUG: group 0 only
        if any(grad.dtype == torch.float16 for grad in grads):
            raise ValueError("Attempting to unscale FP16 gradients: keep fp32 master weights")
        found_inf = not bool(torch.stack(torch._foreach_norm(grads, math.inf)).isfinite().all())
        torch._foreach_mul_(grads, float(torch.tensor(1.0 / self._scale, dtype=torch.float32)))
        self._found_inf[id(optimizer)] = found_inf


train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake: the seed notes' manual GradScaler, with its names adapted to the exercise API.

Its bugs, each caught by a check: no argument validation; unscale_ (the notes' unscale_grads) can run
twice and accepts fp16; step() never unscales (it relies on the caller) and counts growth over all
successful steps, never resetting on overflow; update() does nothing; the scale grows without a
finiteness test; there is no state_dict.
"""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

CAUGHT_BY = {
    "bad arguments raise ValueError": ["no argument validation"],
    "unscale_ twice before update() raises RuntimeError": ["did not raise", "twice"],
    "fp16 gradients are refused (fp32 master weights)": ["fp16 parameters given to the optimizer"],
    "step unscales when unscale_ was not called": ["step without unscaling"],
    "growth needs growth_interval consecutive finite steps": ["not reset on overflow"],
    "the scale never grows to inf": ["scale growing to inf"],
}


class LossScaler:
    def __init__(self, init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self._scale = init_scale  # the notes call it self.scale, which would hide the scale() method
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.step_count = 0
        self.inf_count = 0

    def get_scale(self):
        return self._scale

    def scale(self, loss):  # the notes' scale_loss
        return loss * torch.tensor(self._scale)  # (the notes multiply by a Python float; kept fp32 here)

    def unscale_(self, optimizer):  # the notes' unscale_grads
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.data /= self._scale

    def step(self, optimizer):
        has_inf = False
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    if torch.isinf(param.grad).any() or torch.isnan(param.grad).any():
                        has_inf = True
                        break
        if has_inf:
            self.inf_count += 1
            self._scale *= self.backoff_factor
            return False
        optimizer.step()
        self.step_count += 1
        if self.step_count % self.growth_interval == 0:
            self._scale *= self.growth_factor
        return True

    def update(self):
        pass  # "handled in step"


train_step = _solution.train_step
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake (options together): the magnitude factor scales the bias too: (m / n) (W x + s B A x + bias). Right
without a bias (and at init, where m / n = 1); with a bias and a trained magnitude the output is off."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "forward matches PEFT's DoRA (B != 0, magnitude trained)": ["bias is scaled by m / n"],
    "every bias, train and eval mode, dropout and merge state together": ["bias=True", "bias is added after"],
}


class DoRALinear(_solution.DoRALinear):
    def forward(self, x):
        y = super().forward(x)
        if self.merged or self.base.bias is None:
            return y
        factor = self.magnitude / self.weight_norm()
        return y + (factor - 1) * self.base.bias  # BUG: the bias is added after m / n, unscaled


LoRALinear, apply_lora, count_parameters = _solution.LoRALinear, _solution.apply_lora, _solution.count_parameters

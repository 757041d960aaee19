"""Mistake (options together): the direction term uses the clean x while the LoRA branch uses dropout(x):
(m / n) (W x + s B A dropout(x)) + bias. Right in eval mode and without dropout; in train mode with dropout
it differs from PEFT (whose direction term sees the same dropped input as the branch)."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "dropout: the base keeps x, one mask feeds the direction term and the LoRA branch": ["direction term"],
    "every bias, train and eval mode, dropout and merge state together":
        ["each with mode='train' and dropout=0.5", "wrong with it in train mode"],
}


class DoRALinear(_solution.DoRALinear):
    def forward(self, x):
        y = self.base(x)
        if self.merged:
            return y
        factor = self.magnitude / self.weight_norm()
        lora = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling
        return y + (factor - 1) * F.linear(x, self.base.weight) + factor * lora  # BUG: dropout(x) there too


LoRALinear, apply_lora, count_parameters = _solution.LoRALinear, _solution.apply_lora, _solution.count_parameters

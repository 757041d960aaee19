"""Mistake (options together): "merging is for inference", so the merged flag is honoured in eval mode only.
Every merge check runs in eval mode and passes; in train mode a merged layer adds the update a second time."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "every bias, train and eval mode, dropout and merge state together (vs PEFT)":
        ["exactly those with mode='train' and merge='merged'", "not only in eval mode"],
}


class LoRALinear(_solution.LoRALinear):
    def forward(self, x):
        y = self.base(x)
        if self.merged and not self.training:  # BUG: merged is merged, in train mode too
            return y
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

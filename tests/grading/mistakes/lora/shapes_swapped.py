"""Mistake: lora_A stored as in_features x rank and lora_B as rank x out_features (x @ A @ B).

The forward works, but the shapes are not PEFT's (nor nn.Linear's out x in convention), so
B @ A no longer has base.weight's shape and adapters cannot be exchanged with PEFT.
"""

import math
from pathlib import Path

import torch
import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "lora_A and lora_B shapes": ["lora_A is rank x in_features", "lora_B is out_features x rank"],
}


class LoRALinear(_solution.LoRALinear):
    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        self.lora_A = nn.Parameter(torch.empty(base.in_features, rank))  # BUG: rank x in_features
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features))  # BUG: out_features x rank

    def forward(self, x):
        y = self.base(x)
        if self.merged:
            return y
        return y + self.dropout(x) @ self.lora_A @ self.lora_B * self.scaling

    def delta_weight(self):
        return (self.lora_A @ self.lora_B).T * self.scaling


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

"""Mistake: F.dropout without training=self.training: dropout stays on in eval mode."""

from pathlib import Path

import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "no dropout in eval mode": ["eval mode", "training=self.training"],
}


class LoRALinear(_solution.LoRALinear):
    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        self.p = dropout

    def forward(self, x):
        if self.merged:
            return self.base(x)
        h = F.dropout(x, self.p)  # BUG: F.dropout defaults to training=True, even in eval mode
        return self.base(x) + F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

"""Mistake: the dropout argument is stored but never used."""

from pathlib import Path

import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "dropout drops the LoRA branch's inputs in train mode": ["never applied"],
}


class LoRALinear(_solution.LoRALinear):
    def forward(self, x):
        if self.merged:
            return self.base(x)
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling  # BUG: no dropout


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

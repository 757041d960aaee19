"""Mistake: dropout applied to the input of the frozen path too."""

from pathlib import Path

import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "dropout leaves the base path alone": ["dropout", "base(x) must pass through untouched"],
}


class LoRALinear(_solution.LoRALinear):
    def forward(self, x):
        x = self.dropout(x)  # BUG: the base path must see the clean input
        if self.merged:
            return self.base(x)
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

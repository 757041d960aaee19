"""Mistake: dropout applied to A x (the rank-r activations), not to the branch's input x."""

from pathlib import Path

import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "dropout drops the LoRA branch's inputs in train mode": ["dropout", "input x", "not on a x"],
}


class LoRALinear(_solution.LoRALinear):
    def forward(self, x):
        if self.merged:
            return self.base(x)
        h = self.dropout(F.linear(x, self.lora_A))  # BUG: PEFT drops x, before A
        return self.base(x) + F.linear(h, self.lora_B) * self.scaling


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

"""Mistake: the scaling attribute is right but forward never multiplies by it."""

from pathlib import Path

import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "forward matches PEFT's LoRA (B != 0)": ["scaling", "alpha / rank"],
    "gradients match PEFT's LoRA (A, B and input)": ["scaling", "alpha / rank"],
}


class LoRALinear(_solution.LoRALinear):
    def forward(self, x):
        if self.merged:
            return self.base(x)
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # BUG: no * scaling


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

"""Mistake: lora_A and lora_B both initialised to zero: no gradient ever reaches either."""

from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "lora_A is Kaiming-uniform (|A| <= 1/sqrt(in_features))": ["must not start at zero", "no gradient"],
    "gradients reach lora_B at init and lora_A once B != 0": ["both zero", "no gradient"],
}


class LoRALinear(_solution.LoRALinear):
    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        nn.init.zeros_(self.lora_A)  # BUG: with A = B = 0 both gradients are zero forever


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

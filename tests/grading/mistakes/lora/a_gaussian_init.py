"""Mistake: lora_A drawn from N(0, 1) instead of Kaiming-uniform (far too large)."""

from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "lora_A is Kaiming-uniform (|A| <= 1/sqrt(in_features))": ["kaiming_uniform_"],
}


class LoRALinear(_solution.LoRALinear):
    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        nn.init.normal_(self.lora_A)  # BUG: PEFT uses kaiming_uniform_(a=sqrt(5)), |A| <= 1/sqrt(in)


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

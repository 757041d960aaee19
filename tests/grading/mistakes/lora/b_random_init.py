"""Mistake: lora_B initialised randomly, so the model no longer starts at the pretrained one."""

from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "lora_B starts at zero": ["lora_B must start at zero"],
    "output equals base at init": ["lora_B must start at zero", "base"],
    "model output unchanged at init": ["lora_B at zero"],
}


class LoRALinear(_solution.LoRALinear):
    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        nn.init.kaiming_uniform_(self.lora_B, a=5 ** 0.5)  # BUG: B must start at zero


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

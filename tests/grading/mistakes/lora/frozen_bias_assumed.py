"""Mistake (options together): the wrapped layer is frozen attribute by attribute, assuming it has a bias.
Every layer the checks build one at a time has a bias and passes; a layer without one (bias=False, the tiny
model's k_proj) raises AttributeError."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "every bias, train and eval mode, dropout and merge state together (vs PEFT)":
        ["exactly those with bias=False", "for p in base.parameters()"],
    "target kinds, rank, alpha and dropout together (layers with and without a bias)":
        ["exactly those with targets=('k_proj',)", "no bias"],
}


class LoRALinear(_solution.LoRALinear):
    def __init__(self, base, rank, alpha, dropout=0.0):
        base.bias.requires_grad_(False)  # BUG: base.bias is None for Linear(..., bias=False)
        super().__init__(base, rank, alpha, dropout)


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

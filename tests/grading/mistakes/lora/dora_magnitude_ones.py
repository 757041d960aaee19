"""Mistake: the magnitude starts at ones, not at the row norms of W: at init the layer computes the
row-normalised W x, not base(x)."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "magnitude starts at the row norms: output equals base at init": ["starts at ones"],
}


class DoRALinear(_solution.DoRALinear):
    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        self.magnitude = nn.Parameter(torch.ones(base.out_features))  # BUG: base.weight.norm(dim=1)


LoRALinear, apply_lora, count_parameters = _solution.LoRALinear, _solution.apply_lora, _solution.count_parameters

"""Mistake: the wrapped layer is never frozen (weight and bias keep training)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "base weight frozen": ["requires_grad", "freeze"],
    "base bias frozen": ["requires_grad", "bias included"],
}


class LoRALinear(_solution.LoRALinear):
    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        for p in self.base.parameters():
            p.requires_grad_(True)  # BUG: the pretrained layer must stay frozen


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

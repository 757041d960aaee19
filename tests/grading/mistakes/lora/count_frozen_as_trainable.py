"""Mistake: count_parameters reports every parameter as trainable."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "frozen parameters are not trainable": ["requires_grad"],
}


def count_parameters(model):
    total = sum(p.numel() for p in model.parameters())
    return total, total  # BUG: trainable must filter p.requires_grad


LoRALinear, apply_lora = _solution.LoRALinear, _solution.apply_lora
DoRALinear = _solution.DoRALinear

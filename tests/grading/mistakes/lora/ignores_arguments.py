"""Mistake: apply_lora ignores its alpha and dropout (LoRALinear's defaults used)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "passes rank, alpha and dropout to each LoRALinear": ["alpha"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    return _solution.apply_lora(model, target_modules, rank, alpha=rank)  # BUG: alpha and dropout dropped


LoRALinear, count_parameters = _solution.LoRALinear, _solution.count_parameters
DoRALinear = _solution.DoRALinear

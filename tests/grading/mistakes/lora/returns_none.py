"""Mistake: apply_lora modifies the model but returns nothing."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "returns the model (in place)": ["returns it"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    _solution.apply_lora(model, target_modules, rank, alpha, dropout)  # BUG: no return


LoRALinear, count_parameters = _solution.LoRALinear, _solution.count_parameters
DoRALinear = _solution.DoRALinear

"""Mistake: count_parameters returns (total, trainable)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "frozen parameters are not trainable": ["(trainable, total)"],
}


def count_parameters(model):
    trainable, total = _solution.count_parameters(model)
    return total, trainable  # BUG: the order is (trainable, total)


LoRALinear, apply_lora = _solution.LoRALinear, _solution.apply_lora
DoRALinear = _solution.DoRALinear

"""Mistake: count_parameters counts only the weights and forgets the biases."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "counts a plain model, biases included": ["bias"],
}


def count_parameters(model):
    params = [p for n, p in model.named_parameters() if n.endswith("weight")]  # BUG: biases are parameters too
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


LoRALinear, apply_lora = _solution.LoRALinear, _solution.apply_lora
DoRALinear = _solution.DoRALinear

"""Mistake: count_parameters sums over modules, counting a tied weight twice."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "shared (tied) parameters counted once": ["tied", "once"],
}


def count_parameters(model):
    params = [p for m in model.modules() for p in m.parameters(recurse=False)]  # BUG: a tied tensor twice
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


LoRALinear, apply_lora = _solution.LoRALinear, _solution.apply_lora
DoRALinear = _solution.DoRALinear

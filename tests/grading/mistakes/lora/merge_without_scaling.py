"""Mistake: merge adds B @ A without the scaling."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "merge keeps the output": ["without the scaling"],
    "merged weight is W + B @ A * scaling (PEFT's merge)": ["without the scaling"],
}


class LoRALinear(_solution.LoRALinear):
    def delta_weight(self):
        return self.lora_B @ self.lora_A  # BUG: forgot * self.scaling


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

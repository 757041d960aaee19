"""Mistake: merge adds the transposed update (A.T @ B.T = (B @ A).T): silent for square layers."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "merged weight is W + B @ A * scaling (PEFT's merge)": ["transposed", "lora_B @ lora_A"],
}


class LoRALinear(_solution.LoRALinear):
    def delta_weight(self):
        return (self.lora_A.T @ self.lora_B.T) * self.scaling  # BUG: that is (B @ A).T, in x out


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

"""Mistake: merge() never returns (a busy loop waiting for a condition that never comes).

Graded with a short timeout: the report must say "timed out" instead of hanging the kernel or CLI.
"""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "merge keeps the output": ["timed out"],
    "merged weight is W + B @ A * scaling (PEFT's merge)": ["timed out"],
    "unmerge restores W and the output": ["timed out"],
}
GRADE_TIMEOUT = 0.5  # seconds per check, so the catalog test stays fast


class LoRALinear(_solution.LoRALinear):
    def merge(self):
        converged = False
        while not converged:  # BUG: nothing ever sets converged
            pass


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

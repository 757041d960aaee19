"""Mistake: merge() ends the process (os._exit, left over from debugging, or a library that exits on error).

The grader runs the learner's code in a child process: the death is reported for the checks it happened
in ("the process exited with status 0 during this check"), instead of the CLI printing nothing and exiting
0 (which reads as "every check passed"), and the remaining checks still run.
"""

import os
from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "merge keeps the output": ["exited with status 0", "os._exit"],
    "merged weight is W + B @ A * scaling (PEFT's merge)": ["exited with status 0", "os._exit"],
    "unmerge restores W and the output": ["exited with status 0", "os._exit"],
}


class LoRALinear(_solution.LoRALinear):
    def merge(self):
        os._exit(0)  # BUG: ends the whole process, not just this call


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

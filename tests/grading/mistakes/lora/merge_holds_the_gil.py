"""Mistake: merge() waits in a C call that holds the GIL (here libc's sleep through ctypes.PyDLL; the same
happens with a huge single torch op or a C extension that never releases the GIL).

No Python-level timeout can interrupt it: not even the grader's own thread would get to run. The grader
kills the child process running it instead; the report says "timed out".
"""

import ctypes
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
        ctypes.PyDLL(None).sleep(3600)  # BUG: an hour in C, the GIL held throughout (PyDLL keeps it)


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

"""Mistake: merge() retries forever inside `except BaseException:` (or a bare `except:`).

Such a loop swallows any exception raised into it, so a grader that stops a check by raising inside its
thread cannot stop it: it spins for the rest of the kernel's life and starves every later grade. The
grader kills the child process running it instead; the report says "timed out".
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
        while True:
            try:
                return self._merge_when_ready()
            except BaseException:  # BUG: also swallows KeyboardInterrupt and any timeout raised in here
                pass

    def _merge_when_ready(self):
        raise RuntimeError("not ready")  # never is


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

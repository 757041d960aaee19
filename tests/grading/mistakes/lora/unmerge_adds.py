"""Mistake: unmerge adds the update again instead of subtracting it."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "unmerge restores W and the output": ["subtract"],
}


class LoRALinear(_solution.LoRALinear):
    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight += self.delta_weight()  # BUG: -=
            self.merged = False


_solution.LoRALinear = LoRALinear  # so that the solution's apply_lora builds the broken layer too
apply_lora, count_parameters = _solution.apply_lora, _solution.count_parameters
DoRALinear = _solution.DoRALinear

"""Mistake: unmerge recomputes the norm from the merged weight instead of keeping the one merge used. The
merged weight's row norms are m, not n, so W does not come back."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "merge and unmerge match PEFT's DoRA": ["unmerge must divide by the factor merge used"],
}


class DoRALinear(_solution.DoRALinear):
    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            factor = (self.magnitude / self.base.weight.norm(dim=1)).unsqueeze(1)  # BUG: self.merged_norm
            self.base.weight.copy_(self.base.weight / factor - self.delta_weight())
            self.merged = False


LoRALinear, apply_lora, count_parameters = _solution.LoRALinear, _solution.apply_lora, _solution.count_parameters

"""Mistake: the row norm n = ||W + s B A|| is not detached, so A and B get a gradient through it too (the
forward is right; PEFT and the paper treat n as a constant)."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "gradients match PEFT's DoRA (A, B, magnitude and input; the norm detached)": ["norm is not detached"],
}


class DoRALinear(_solution.DoRALinear):
    def weight_norm(self):
        return (self.base.weight + (self.lora_B @ self.lora_A) * self.scaling).norm(dim=1)  # BUG: no .detach()


LoRALinear, apply_lora, count_parameters = _solution.LoRALinear, _solution.apply_lora, _solution.count_parameters

"""Mistake: merge folds in the LoRA update only (W + s B A, the inherited merge): the magnitude is lost,
so the merged layer no longer computes what the unmerged one did."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "merge and unmerge match PEFT's DoRA": ["merged like plain LoRA"],
}


class DoRALinear(_solution.DoRALinear):
    merge = _solution.LoRALinear.merge  # BUG: (m / n)[:, None] (W + s B A)
    unmerge = _solution.LoRALinear.unmerge


LoRALinear, apply_lora, count_parameters = _solution.LoRALinear, _solution.apply_lora, _solution.count_parameters

"""Mistake (options together): the frozen parameters are found by walking every module's own parameters.
Right for a frozen untied model and for a tied model that trains; a frozen tied weight is counted twice."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "tied and frozen weights together": ["each with model='tied'", "frozen tied weight is counted twice"],
}


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False)
                 if not p.requires_grad)  # BUG: a tied weight belongs to two modules
    return trainable, trainable + frozen


LoRALinear, apply_lora = _solution.LoRALinear, _solution.apply_lora
DoRALinear = _solution.DoRALinear

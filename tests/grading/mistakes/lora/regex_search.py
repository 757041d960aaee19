"""Mistake: re.search(target, name): a regex search is a substring match in disguise."""

import re
from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "name matching: 'q' does not match 'q_proj'": ["substring", "'q' must not match 'layers.0.attn.q_proj'"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        matched = any(re.search(t, name) for t in target_modules)  # BUG: PEFT uses re.fullmatch for a str, exact/suffix for a list
        if matched and isinstance(module, nn.Linear):
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, LoRALinear(module, rank, alpha, dropout))
    return model


LoRALinear = _solution.LoRALinear
count_parameters = _solution.count_parameters
DoRALinear = _solution.DoRALinear

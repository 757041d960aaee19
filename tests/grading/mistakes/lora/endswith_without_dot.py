"""Mistake: name.endswith(target) without the dot: 'proj' also matches 'o_proj'."""

from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "name matching: 'proj' does not match 'o_proj'": ["name.endswith(target) without the dot", "'.' + target"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        matched = any(name.endswith(t) for t in target_modules)  # BUG: needs name == t or endswith("." + t)
        if matched and isinstance(module, nn.Linear):
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, LoRALinear(module, rank, alpha, dropout))
    return model


LoRALinear = _solution.LoRALinear
count_parameters = _solution.count_parameters
DoRALinear = _solution.DoRALinear

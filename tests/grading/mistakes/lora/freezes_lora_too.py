"""Mistake: freezes the model after wrapping: lora_A and lora_B end up frozen as well."""

from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "freezes everything except LoRA": ["lora parameters frozen"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    for name, module in list(model.named_modules()):
        if any(name == t or name.endswith("." + t) for t in target_modules) and isinstance(module, nn.Linear):
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, LoRALinear(module, rank, alpha, dropout))
    for p in model.parameters():  # BUG: freezing after wrapping freezes the LoRA parameters too
        p.requires_grad_(False)
    return model


LoRALinear, count_parameters = _solution.LoRALinear, _solution.count_parameters
DoRALinear = _solution.DoRALinear

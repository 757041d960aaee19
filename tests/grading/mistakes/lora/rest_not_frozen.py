"""Mistake: only the wrapped layers are frozen; embeddings, norms, other Linears keep training."""

from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "freezes everything except LoRA": ["freeze every parameter"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    # BUG: no `for p in model.parameters(): p.requires_grad_(False)`
    for name, module in list(model.named_modules()):
        if any(name == t or name.endswith("." + t) for t in target_modules) and isinstance(module, nn.Linear):
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, LoRALinear(module, rank, alpha, dropout))
    return model


LoRALinear, count_parameters = _solution.LoRALinear, _solution.count_parameters
DoRALinear = _solution.DoRALinear

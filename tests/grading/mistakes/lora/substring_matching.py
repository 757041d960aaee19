"""Mistake: the seed's apply_lora: substring target matching (`target in name`) and nothing frozen
but the wrapped layers. "q" then also wraps "q_proj", "proj" wraps "o_proj" and "q_proj"."""

from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "name matching: 'q' does not match 'q_proj'": ["substring", "the seed's bug", "'q' must not match 'layers.0.attn.q_proj'"],
    "name matching: 'proj' does not match 'o_proj'": ["substring", "'proj' must not match 'layers.0.attn.k_proj'"],
    "freezes everything except LoRA": ["freeze every parameter"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    for name, module in model.named_modules():
        if any(target in name for target in target_modules):  # BUG: substring match
            if isinstance(module, nn.Linear):
                lora_layer = LoRALinear(module, rank, alpha, dropout)
                parent_name = ".".join(name.split(".")[:-1])
                child_name = name.split(".")[-1]
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child_name, lora_layer)
    return model  # BUG: the rest of the model is not frozen


LoRALinear, count_parameters = _solution.LoRALinear, _solution.count_parameters
DoRALinear = _solution.DoRALinear

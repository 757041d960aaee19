"""Mistake: setattr(model, name, LoRALinear(...)) with the full dotted name.

nn.Module.__setattr__ happily stores the new layer under the key "layers.0.attn.q_proj" on the
top-level model, so named_modules() lists it, but the real layers.0.attn.q_proj is untouched and
the forward pass never calls the LoRA layer. Replace the child on its parent instead.
"""

from pathlib import Path

import torch.nn as nn

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "wraps exactly the targeted Linear layers": ["nothing was wrapped", "setattr(parent, child_name"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if any(name == t or name.endswith("." + t) for t in target_modules) and isinstance(module, nn.Linear):
            setattr(model, name, _solution.LoRALinear(module, rank, alpha, dropout))  # BUG: on the parent
    return model


LoRALinear, count_parameters = _solution.LoRALinear, _solution.count_parameters
DoRALinear = _solution.DoRALinear

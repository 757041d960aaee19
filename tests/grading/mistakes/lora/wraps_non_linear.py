"""Mistake: no isinstance(module, nn.Linear) check: a matching LayerNorm or container gets wrapped."""

from pathlib import Path


from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "lora.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "skips (or clearly rejects) non-Linear modules": ["nn.Linear", "attributeerror"],
}


def apply_lora(model, target_modules, rank, alpha, dropout=0.0):
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if any(name == t or name.endswith("." + t) for t in target_modules):  # BUG: no isinstance(module, nn.Linear)
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, LoRALinear(module, rank, alpha, dropout))
    return model


LoRALinear, count_parameters = _solution.LoRALinear, _solution.count_parameters
DoRALinear = _solution.DoRALinear

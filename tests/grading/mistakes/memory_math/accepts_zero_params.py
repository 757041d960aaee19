"""Mistake: non-positive sizes are not rejected (0 parameters cost 0 bytes, -7 cost negative bytes)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'bad input raises a clear ValueError': ['non-positive']}

def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False):
    if optimizer not in ("adam", "sgd_momentum", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    states = {"adam": 2, "sgd_momentum": 1, "sgd": 0}[optimizer]  # BUG: no check of the sizes
    return int(num_params * (weight_bytes + grad_bytes + 4 * states + (4 if master_weights else 0)))


lora_trainable_params, activation_bytes = _solution.lora_trainable_params, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

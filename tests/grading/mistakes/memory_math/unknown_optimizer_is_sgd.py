"""Mistake: an unknown optimizer name silently counts as plain SGD."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'bad input raises a clear ValueError': ['unknown optimizer']}

def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False):
    if num_params <= 0 or weight_bytes <= 0 or grad_bytes <= 0:
        raise ValueError(f"sizes must be positive: num_params={num_params}, weight_bytes={weight_bytes}, "
                         f"grad_bytes={grad_bytes}")
    states = {"adam": 2, "sgd_momentum": 1}.get(optimizer, 0)  # BUG: "adagrad" -> 0 states, no error
    return int(num_params * (weight_bytes + grad_bytes + 4 * states + (4 if master_weights else 0)))


lora_trainable_params, activation_bytes = _solution.lora_trainable_params, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

"""Mistake: SGD with momentum is given two states, like Adam."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'SGD with momentum keeps one state, plain SGD none': ['two states']}

def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False):
    states = {"adam": 2, "sgd_momentum": 1, "sgd": 0}
    if num_params <= 0 or weight_bytes <= 0 or grad_bytes <= 0 or optimizer not in states:
        return _solution.training_memory_bytes(num_params, weight_bytes=weight_bytes, grad_bytes=grad_bytes,
                                               optimizer=optimizer)  # the solution's errors
    states["sgd_momentum"] = 2  # BUG: one momentum buffer only
    return int(num_params * (weight_bytes + grad_bytes + 4 * states[optimizer] + (4 if master_weights else 0)))


lora_trainable_params, activation_bytes = _solution.lora_trainable_params, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

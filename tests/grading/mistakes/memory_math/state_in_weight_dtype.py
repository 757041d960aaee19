"""Mistake: the optimizer state is counted in the weights' dtype (bf16 m and v)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'optimizer state is fp32 even for 16-bit weights': ["weights' dtype"]}

def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False):
    states = {"adam": 2, "sgd_momentum": 1, "sgd": 0}
    if num_params <= 0 or weight_bytes <= 0 or grad_bytes <= 0 or optimizer not in states:
        return _solution.training_memory_bytes(num_params, weight_bytes=weight_bytes, grad_bytes=grad_bytes,
                                               optimizer=optimizer)  # the solution's errors
    per = weight_bytes + grad_bytes + weight_bytes * states[optimizer]  # BUG: m, v are fp32
    return int(num_params * (per + (4 if master_weights else 0)))


lora_trainable_params, activation_bytes = _solution.lora_trainable_params, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

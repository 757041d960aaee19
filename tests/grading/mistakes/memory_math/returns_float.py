"""Mistake: the byte count is returned as a float."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'returns an int of bytes': ['int']}

def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False):
    return float(_solution.training_memory_bytes(num_params, weight_bytes=weight_bytes, grad_bytes=grad_bytes,
                                                 optimizer=optimizer, master_weights=master_weights))  # BUG


lora_trainable_params, activation_bytes = _solution.lora_trainable_params, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

"""Mistake: only the first layer of the list is counted."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'sums over layers (LLaMA-7B q, v at r=8: 4,194,304)': ['first layer']}

def lora_trainable_params(shapes, rank):
    _solution.lora_trainable_params(shapes, rank)
    out_f, in_f = shapes[0]  # BUG: every layer counts
    return (out_f + in_f) * rank


training_memory_bytes, activation_bytes = _solution.training_memory_bytes, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

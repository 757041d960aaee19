"""Mistake: a rank larger than the layer is accepted."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'rank larger than a layer, or non-positive sizes, raise ValueError': ['larger than a layer']}

def lora_trainable_params(shapes, rank):
    if rank < 1:
        raise ValueError(f"rank must be positive, got {rank}")
    return sum((o + i) * rank for o, i in shapes)  # BUG: rank > min(out, in) not rejected


training_memory_bytes, activation_bytes = _solution.training_memory_bytes, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

"""Mistake: every layer is assumed square: 2 * out_features * r."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'non-square layers: A is r x in, B is out x r': ['square']}

def lora_trainable_params(shapes, rank):
    _solution.lora_trainable_params(shapes, rank)
    return sum(2 * out_f * rank for out_f, in_f in shapes)  # BUG: A is r x in_features


training_memory_bytes, activation_bytes = _solution.training_memory_bytes, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

"""Mistake: LoRA's parameters counted as d * k * r."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'one square layer: (d + k) * r': ['d*k*r'], 'non-square layers: A is r x in, B is out x r': ['d*k*r'], 'sums over layers (LLaMA-7B q, v at r=8: 4,194,304)': ['d*k*r']}

def lora_trainable_params(shapes, rank):
    _solution.lora_trainable_params(shapes, rank)  # the solution's errors
    return sum(out_f * in_f * rank for out_f, in_f in shapes)  # BUG: (d + k) * r


training_memory_bytes, activation_bytes = _solution.training_memory_bytes, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

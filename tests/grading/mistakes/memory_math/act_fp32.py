"""Mistake: the formula, already in bytes, is multiplied by 2 again."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'no recomputation: sbh(34 + 5as/h) per layer (7B, s=2048: 30.6 GB)': ['fp32'], 'selective and full recomputation: 34sbh and 2sbh': ['fp32']}

def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none"):
    return 2 * _solution.activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute)  # BUG


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
optimizer_step_temporaries = _solution.optimizer_step_temporaries

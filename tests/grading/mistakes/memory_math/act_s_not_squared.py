"""Mistake: the attention term uses s instead of s^2: 5*a*s*b."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'no recomputation: sbh(34 + 5as/h) per layer (7B, s=2048: 30.6 GB)': ['s^2']}

def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none"):
    if recompute != "none":
        return _solution.activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute)
    s, b, h, a = seq_len, batch_size, hidden_size, n_heads
    return int((34 * s * b * h + 5 * a * s * b) * n_layers)  # BUG: sbh * 5as/h = 5 a s^2 b


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
optimizer_step_temporaries = _solution.optimizer_step_temporaries

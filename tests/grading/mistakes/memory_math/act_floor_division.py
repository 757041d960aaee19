"""Mistake (options together): 5as/h computed with integer division. Exact when h divides 5as (the 7B
probe: 80), wrong without recomputation when it does not."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"every recompute with one or many layers, batch 1 or more, and 5as/h whole or not":
             ["recompute='none' and n_heads=7", "integer division"],
             "no recomputation: sbh(34 + 5as/h) per layer (7B, s=2048: 30.6 GB)": ["integer division"]}


def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none"):
    if recompute != "none":
        return _solution.activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute)
    _solution.activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers)  # the solution's errors
    s, b, h, a = seq_len, batch_size, hidden_size, n_heads
    return s * b * h * (34 + 5 * a * s // h) * n_layers  # BUG: // rounds 5as/h down


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
optimizer_step_temporaries = _solution.optimizer_step_temporaries

"""Mistake: an unknown recompute name is treated as 'none'."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'returns an int; bad input raises ValueError': ['recompute one of']}

def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none"):
    if recompute not in ("selective", "full"):
        recompute = "none"  # BUG: "partial" is a typo the caller should hear about
    return _solution.activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
optimizer_step_temporaries = _solution.optimizer_step_temporaries

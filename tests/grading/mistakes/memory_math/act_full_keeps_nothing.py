"""Mistake: full recomputation is counted as keeping nothing."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'selective and full recomputation: 34sbh and 2sbh': ['full keeps 2*s*b*h']}

def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none"):
    if recompute == "full":
        return 0  # BUG: each layer's input (2sbh) is kept to recompute from
    return _solution.activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
optimizer_step_temporaries = _solution.optimizer_step_temporaries

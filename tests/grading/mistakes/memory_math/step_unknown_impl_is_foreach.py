"""Mistake: an unknown implementation name is taken for foreach (a typo such as "fast" passes silently)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"returns an int; unknown names and non-positive sizes raise ValueError": ["impl='fast'", "not be taken for foreach"]}


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes):
    if impl not in ("for-loop", "fused"):
        impl = "foreach"  # BUG: "fast" is a mistake the caller should hear about
    return _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
activation_bytes = _solution.activation_bytes

"""Mistake: foreach Adam counted for the largest parameter only, as if one sqrt(v) were alive at a time."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"Adam and AdamW, foreach: what torch.profiler measures": ["foreach counted for the largest parameter only"]}


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes):
    if impl == "foreach" and optimizer in ("adam", "adamw") and trainable_numels:
        _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)  # its errors
        return max(trainable_numels) * state_bytes  # BUG: _foreach_sqrt makes every sqrt(v) at once
    return _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
activation_bytes = _solution.activation_bytes

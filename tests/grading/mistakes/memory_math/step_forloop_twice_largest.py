"""Mistake: the for-loop counted as two temporaries of the largest parameter ("sqrt(v) and the division"),
forgetting that the previous parameter's result is still alive."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"Adam, for-loop: what torch.profiler measures": ["two temporaries of the largest parameter", "n_(i-1)"]}


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes):
    if impl == "for-loop" and optimizer in ("adam", "adamw") and trainable_numels:
        _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)  # its errors
        return 2 * max(trainable_numels) * state_bytes  # BUG: + the previous parameter's denom
    return _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
activation_bytes = _solution.activation_bytes

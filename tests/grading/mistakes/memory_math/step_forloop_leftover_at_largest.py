"""Mistake: the for-loop's leftover (the previous parameter's result) added at the largest parameter only.
Right when the worst moment is at the largest tensor; wrong for (100, 96, 7), where it is at the second."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"Adam, for-loop: what torch.profiler measures": ["[100, 96, 7]", "need not be at the largest"]}


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes):
    if impl == "for-loop" and optimizer in ("adam", "adamw") and trainable_numels:
        _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)  # its errors
        numels = list(trainable_numels)
        i = numels.index(max(numels))  # BUG: the max over every i of 2 n_i + n_(i-1)
        return (2 * numels[i] + (numels[i - 1] if i else 0)) * state_bytes
    return _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
activation_bytes = _solution.activation_bytes

"""Mistake: SGD given Adam's temporaries (every optimizer "makes temporaries")."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"fused Adam and SGD: what torch.profiler measures": ["SGD given Adam's temporaries"]}


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes):
    if optimizer in ("sgd", "sgd_momentum"):
        _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)  # its errors
        optimizer = "adam"  # BUG: SGD updates in place, with or without momentum
    return _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
activation_bytes = _solution.activation_bytes

"""Mistake (options together): the for-loop branch assumes fp32 state (4 bytes). Right for the for-loop in
fp32 and for foreach in bf16; wrong for the for-loop with bf16 state."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"every optimizer, implementation, state dtype and parameter list together (torch.profiler)":
             ["impl='for-loop' and state_bytes=2", "ignored by the for-loop"]}


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes):
    _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)  # its errors
    if impl == "for-loop":
        state_bytes = 4  # BUG: the temporaries have the state's dtype in every implementation
    return _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
activation_bytes = _solution.activation_bytes

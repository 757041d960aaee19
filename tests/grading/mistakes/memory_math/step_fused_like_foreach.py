"""Mistake: fused=True counted like foreach (as if "fused" only meant fewer kernel launches)."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"fused Adam and SGD: what torch.profiler measures": ["fused counted like foreach", "in place"]}


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes):
    if impl == "fused":
        impl = "foreach"  # BUG: fused updates each parameter in one kernel, in place
    return _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
activation_bytes = _solution.activation_bytes

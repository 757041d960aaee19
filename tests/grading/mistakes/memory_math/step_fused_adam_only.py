"""Mistake (options together): fused honoured for Adam only; AdamW(fused=True) counted like foreach. Right
for fused Adam and for foreach AdamW; wrong for the two together."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"every optimizer, implementation, state dtype and parameter list together (torch.profiler)":
             ["optimizer='adamw' and impl='fused'", "fused honoured for Adam only"]}


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes):
    if optimizer == "adamw" and impl == "fused":
        impl = "foreach"  # BUG: AdamW(fused=True) updates in place like Adam(fused=True)
    return _solution.optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes)


training_memory_bytes, lora_trainable_params = _solution.training_memory_bytes, _solution.lora_trainable_params
activation_bytes = _solution.activation_bytes

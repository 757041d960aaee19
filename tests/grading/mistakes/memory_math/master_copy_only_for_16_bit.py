"""Mistake (options together): the fp32 master copy is added only for 16-bit weights ("fp32 weights are
their own master"), so master_weights=True with weight_bytes=4 drops it. Right for each option alone."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"every optimizer, with and without a master copy, with fp32 and 16-bit weights and gradients":
             ["master_weights=True and weight_bytes=4", "only for 16-bit weights"]}


def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False):
    with_master = master_weights and weight_bytes < 4  # BUG: the caller asked for a master copy
    return _solution.training_memory_bytes(num_params, weight_bytes=weight_bytes, grad_bytes=grad_bytes,
                                           optimizer=optimizer, master_weights=with_master)


lora_trainable_params, activation_bytes = _solution.lora_trainable_params, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

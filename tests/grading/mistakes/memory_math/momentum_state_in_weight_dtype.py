"""Mistake (options together): Adam's states are fp32, but the momentum buffer of SGD is counted in the
weights' dtype. Right with fp32 weights, and for Adam with 16-bit ones; wrong for SGD with momentum on 16-bit weights."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"every optimizer, with and without a master copy, with fp32 and 16-bit weights and gradients":
             ["optimizer='sgd_momentum' and weight_bytes=2", "momentum buffer counted in the weights' dtype"]}


def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False):
    total = _solution.training_memory_bytes(num_params, weight_bytes=weight_bytes, grad_bytes=grad_bytes,
                                            optimizer=optimizer, master_weights=master_weights)
    if optimizer == "sgd_momentum":
        total -= num_params * (4 - weight_bytes)  # BUG: the momentum buffer is fp32 too
    return int(total)


lora_trainable_params, activation_bytes = _solution.lora_trainable_params, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

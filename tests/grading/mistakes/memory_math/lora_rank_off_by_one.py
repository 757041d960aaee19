"""Mistake: rank == min(out, in) is rejected although it is allowed."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'rank larger than a layer, or non-positive sizes, raise ValueError': ['is allowed']}

def lora_trainable_params(shapes, rank):
    for out_f, in_f in shapes:
        if rank >= min(out_f, in_f):  # BUG: rank == min(out, in) is a full-rank update, still fine
            raise ValueError(f"rank {rank} too large for {out_f} x {in_f}")
    return _solution.lora_trainable_params(shapes, rank)


training_memory_bytes, activation_bytes = _solution.training_memory_bytes, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

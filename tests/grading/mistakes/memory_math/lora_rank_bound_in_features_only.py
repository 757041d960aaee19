"""Mistake (options together): the rank bound is checked against in_features only. Square and tall
layers are right; a wide layer (in > out) accepts a rank up to in_features, more than B A can have."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "memory_math.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {"ranks up to and past the limit on square, tall and wide layers, alone and among others":
             ["layer='wide (in > out)' and rank='the limit + 1'", "in_features only"]}


def lora_trainable_params(shapes, rank):
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    total = 0
    for out_features, in_features in shapes:
        if out_features < 1 or in_features < 1:
            raise ValueError(f"layer sizes must be positive, got {out_features} x {in_features}")
        if rank > in_features:  # BUG: min(out_features, in_features)
            raise ValueError(f"rank {rank} is larger than in_features {in_features}")
        total += (out_features + in_features) * rank
    return total


training_memory_bytes, activation_bytes = _solution.training_memory_bytes, _solution.activation_bytes
optimizer_step_temporaries = _solution.optimizer_step_temporaries

"""What torch.optim allocates inside its step, beyond its state: the estimator's optimizer-step phase.

Measured with torch.profiler on torch 2.13 (tests/test_memory.py holds every figure), for the optimizers
and implementations the estimator knows. Why it matters: torch's default on CUDA (foreach) holds one more
copy of every trainable parameter during Adam's step, which makes the step the peak of a full fine-tune at
small batch (LLaMA-2-7B, fp32 Adam, b=1: 134.8 GB instead of 107.8).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["ADAM_LIKE", "clip_temporaries", "optimizer_step_temporaries"]

#: the optimizers whose step computes sqrt(v) (SGD, with or without momentum, updates in place)
ADAM_LIKE = ("adam", "adamw")
#: the optimizers that update in place (no temporaries), and the implementations torch.optim offers
IN_PLACE = ("sgd_momentum", "sgd")
IMPLS = ("foreach", "for-loop", "fused")


def optimizer_step_temporaries(optimizer: str, impl: str, trainable_numels: Sequence[int], state_elem: int) -> int:
    """Bytes torch.optim allocates inside step() beyond its state, by implementation (measured with
    torch.profiler on torch 2.13, tests/test_memory.py holds them):

    Adam / AdamW  for-loop  one parameter at a time: sqrt(v) and its division by the bias correction
                            are alive at once, while the previous parameter's result (`denom`, a local
                            not yet reassigned) still is: max over i of 2 n_i + n_(i-1), in order
                  foreach   1 x every trainable parameter at once (torch._foreach_sqrt of all the v)
                  fused     nothing (one kernel per parameter, in place)
    SGD, with or without momentum: nothing (in place), whatever the implementation.
    Exercise 0.4's API: unknown names and non-positive sizes are a ValueError.
    """
    _one_of("optimizer", optimizer, (*ADAM_LIKE, *IN_PLACE))
    _one_of("impl", impl, IMPLS)
    state_elem = _positive("state_bytes", state_elem)
    numels = [_positive("every element count", n) for n in trainable_numels]
    if optimizer not in ADAM_LIKE or impl == "fused" or not numels:
        return 0
    if impl == "for-loop":
        previous = [0, *numels[:-1]]
        return max(2 * n + before for n, before in zip(numels, previous)) * state_elem
    return sum(numels) * state_elem


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _positive(name: str, value) -> int:
    # bool is an int to Python, not a size to a learner
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def clip_temporaries(n_tensors: int) -> int:
    """clip_grad_norm_: one fp32 norm per gradient tensor, their stacked copy, and the total (bytes)."""
    return 8 * n_tensors + 4

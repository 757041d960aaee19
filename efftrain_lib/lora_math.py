"""LoRA's arithmetic, in one place: the layer (efftrain_lib.lora), the memory estimator
(efftrain_lib.memory) and the chapter's sliders (efftrain_lib.lora_explorer) all call these.

    scaling(alpha, rank)                 alpha / r (Hu et al. 2021), or alpha / sqrt(r) with rslora=True
    parameter_count(out, in, rank)       (out + in) * r trainable parameters for one (out x in) weight
    check_rank(rank, out, in)            a positive integer, at most min(out, in)

Why a rank above min(out, in) is refused: B A is an (out x in) matrix of rank at most min(out, in), so
extra rank buys parameters and no expressiveness (PEFT accepts it; the course calls it a mistake).
"""

from __future__ import annotations

import math

__all__ = ["check_alpha", "check_rank", "parameter_count", "scaling"]


def check_rank(rank, out_features: int | None = None, in_features: int | None = None, *,
               name: str = "LoRA rank", layer: str = "") -> int:
    """`rank` if it is a positive integer (and, given a layer's shape, at most min(out, in)); else ValueError."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"{name} must be a positive integer (r >= 1), got {rank!r}.")
    if out_features is not None and in_features is not None:
        if min(out_features, in_features) < 1:
            raise ValueError(f"layer dimensions must be >= 1, got {out_features} x {in_features}")
        if rank > min(out_features, in_features):
            where = f"layer {layer} ({out_features} x {in_features})" if layer else f"layer {out_features} x {in_features}"
            raise ValueError(f"LoRA rank {rank} is larger than {where} allows "
                             f"(at most min(out, in) = {min(out_features, in_features)}): B A cannot have a higher rank")
    return rank


def check_alpha(alpha) -> float:
    """`alpha` as a float if it is a finite number > 0; else ValueError."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a finite number > 0 (scaling = alpha / rank), got {alpha!r}.")
    return float(alpha)


def scaling(alpha: float, rank: int, rslora: bool = False) -> float:
    """The factor on B A x: alpha / r, or rsLoRA's alpha / sqrt(r) (Kalajdzievski 2023), which keeps the
    update's scale from shrinking as r grows."""
    rank = check_rank(rank)
    return check_alpha(alpha) / (math.sqrt(rank) if rslora else rank)


def parameter_count(out_features: int, in_features: int, rank: int) -> int:
    """Trainable parameters of a rank-r LoRA on one (out x in) weight: A is r x in, B is out x r."""
    check_rank(rank, out_features, in_features)
    return (out_features + in_features) * rank

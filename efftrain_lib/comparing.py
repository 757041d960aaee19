"""How the course compares ours with the reference: one `max_abs_diff` for every chapter.

Every "equal to PEFT / torch.utils.checkpoint / GradScaler / the big batch" claim prints one figure,
max |ours - reference|, computed in fp32 so that a bf16 tensor compares with an fp32 one. It takes two
tensors, two sequences of tensors (pairwise), or two dicts of tensors with the same keys (gradients by
parameter name, from `gradient_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["gradient_dict", "max_abs_diff"]


def max_abs_diff(a, b) -> float:
    """max |a - b| as a float, in fp32, over tensors, pairwise over sequences, or key by key over dicts."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            raise ValueError(f"cannot compare tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
        if a.numel() == 0:
            return 0.0
        return (a.detach().float() - b.detach().float()).abs().max().item()
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise ValueError(f"the two dicts name different entries: {sorted(set(a) ^ set(b))[:4]}")
        pairs = [(a[k], b[k]) for k in a]
    elif isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, (str, bytes)):
        if len(a) != len(b):
            raise ValueError(f"cannot compare sequences of {len(a)} and {len(b)} tensors")
        pairs = list(zip(a, b))
    else:
        raise ValueError(f"max_abs_diff compares two tensors, two sequences or two dicts of tensors; "
                         f"got {type(a).__name__} and {type(b).__name__}")
    if not pairs:
        raise ValueError("nothing to compare: both sides are empty")
    return max(max_abs_diff(x, y) for x, y in pairs)


def gradient_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter's .grad, by name (parameters without one are left out)."""
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}

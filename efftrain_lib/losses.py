"""The language-model loss, and how a window of micro-batches is normalised.

Every chapter trains with next-token cross-entropy, where labels equal to -100 are ignored (padding,
prompt tokens). Its mean over one batch is `language_model_loss`. A step over several micro-batches
needs the *sum* instead (`summed_loss`), divided by the labelled positions of the whole window
(`count_labelled` summed over it): then the pieces add up to the window's token mean, and so do their
gradients (the 2024 accumulation fix, transformers PR #34191, `num_items_in_batch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "check_logits_labels", "count_labelled", "language_model_loss", "summed_loss"]


def count_labelled(labels: torch.Tensor) -> int:
    """Positions that count in the loss: every label that is not -100."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a tensor, got {type(labels).__name__}")
    return int((labels != IGNORE_INDEX).sum())


def check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Labels must have the logits' leading shape: logits [..., num_classes], labels [...]."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
        raise ValueError(f"model(inputs) must return logits of shape [..., num_classes], got {logits!r:.80}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)}: "
            f"labels must have the logits' leading shape {tuple(logits.shape[:-1])} (one class index, or "
            f"{IGNORE_INDEX}, per position)"
        )


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the labelled positions (fp32; -100 ignored).

    Divide it by the token count of the whole window, not by this batch's count: the sum of the
    window's pieces is then the window's token mean, and so is its gradient.
    """
    check_logits_labels(logits, labels)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy of one batch; targets equal to -100 are ignored. Computed in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)

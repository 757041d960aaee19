"""Mistake: the leftover batches (fewer than k) are silently dropped."""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")
GradientAccumulator = _solution.GradientAccumulator


def _ce(logits, labels, reduction="sum"):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction=reduction)


accumulation_step = _solution.accumulation_step

CAUGHT_BY = {
    "windows of k, one step each, the final partial window included": ["partial window dropped"],
    "every window equals a full-batch step, the partial one too": [],
    "unequal token counts: each window normalized by its own token count": [],
    "returns one token-mean loss per window": [],
    "training equals full-batch training (SGD with momentum)": [],
    "scheduler: one step per window": [],
    "GradScaler: one update per window": [],
    "options together: autocast dtype x GradScaler x clipping x scheduler, every window": ["6 forwards for 7 micro-batches", "final partial one"],
}


class GradientAccumulator(_solution.GradientAccumulator):
    def train(self, batches):
        batches = list(batches)
        full = len(batches) - len(batches) % self.k  # BUG: the last len % k batches never train
        return super().train(batches[:full])
streaming_accumulation_step = _solution.streaming_accumulation_step

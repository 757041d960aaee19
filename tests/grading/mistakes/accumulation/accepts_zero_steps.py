"""Mistake: accumulation_steps is not validated: k = 0 is accepted."""

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
    "accumulation_steps < 1 is an error": ["accepted"],
}


class GradientAccumulator(_solution.GradientAccumulator):
    def __init__(self, model, optimizer, accumulation_steps, **kwargs):
        # BUG: no check; with k = 0 the window never fills and everything lands in one "partial" step
        self.model, self.optimizer, self.k = model, optimizer, accumulation_steps
        self.step_kwargs = kwargs
streaming_accumulation_step = _solution.streaming_accumulation_step

"""Mistake: GradientAccumulator's final partial window is stepped by a separate call that forgets
autocast_dtype (added to the full windows' call, not to this one)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'options together: autocast dtype x GradScaler x clipping x scheduler, every window':
        ['in the final partial window', 'autocast_dtype dropped'],
}


class GradientAccumulator(_solution.GradientAccumulator):
    def train(self, batches):
        losses, window = [], []
        for batch in batches:
            window.append(batch)
            if len(window) == self.k:
                losses.append(_solution.accumulation_step(self.model, self.optimizer, window, **self.step_kwargs))
                window = []
        if window:  # BUG: autocast_dtype is not passed to the last window
            options = {k: v for k, v in self.step_kwargs.items() if k != "autocast_dtype"}
            losses.append(_solution.accumulation_step(self.model, self.optimizer, window, **options))
        return losses


accumulation_step = _solution.accumulation_step
streaming_accumulation_step = _solution.streaming_accumulation_step

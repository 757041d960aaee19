"""Mistake: the seed notes' train_epoch: every loss divided by k, the leftover window too.

Each micro-batch's mean loss / k, an optimizer step every k micro-batches and one more for the m < k
leftovers: that last step's gradient is m/k of the right one. (With unequal token counts the same
code is also the mean of micro-batch means.) Scaler, clipping and scheduler are handled correctly.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")
accumulation_step = _solution.accumulation_step

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "every window equals a full-batch step, the partial one too": ["partial window divided by k", "2/4"],
    "unequal token counts: each window normalized by its own token count": ["mean of per-micro-batch means"],
    "returns one token-mean loss per window": ["token-mean loss of one whole window"],
    "training equals full-batch training (SGD with momentum)": ["full-batch training"],
    "GradScaler: one update per window": ["mean of per-micro-batch means"],
    "options together: autocast dtype x GradScaler x clipping x scheduler, every window": ["mean of per-micro-batch means"],
}


class GradientAccumulator:
    def __init__(self, model, optimizer, accumulation_steps, *, scaler=None, max_grad_norm=None, scheduler=None,
                 autocast_dtype=None):
        if accumulation_steps < 1:
            raise ValueError("accumulation_steps must be >= 1")
        self.model, self.optimizer, self.k = model, optimizer, accumulation_steps
        self.scaler, self.max_grad_norm, self.scheduler = scaler, max_grad_norm, scheduler
        self.autocast_dtype = autocast_dtype

    def _step(self):
        if self.max_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad()

    def train(self, batches):
        losses, total, n = [], 0.0, 0
        self.optimizer.zero_grad()
        for i, (inputs, labels) in enumerate(batches):
            with torch.autocast(inputs.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                logits = self.model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=-100) / self.k  # BUG for the leftover window: m < k batches
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.item()
            n = i + 1
            if n % self.k == 0:
                self._step()
                losses.append(total)
                total = 0.0
        if n % self.k != 0:  # the leftover window is stepped, but its gradient is m/k too small
            self._step()
            losses.append(total)
        return losses
streaming_accumulation_step = _solution.streaming_accumulation_step

"""Gradient accumulation that is exactly a big batch.

k micro-batches, one optimizer step: `backward()` adds into `.grad`, so the gradients of k
micro-batch losses sum up. The sum is the big batch's gradient only if each loss is normalized by
what the big batch would have divided by: the number of labelled positions (tokens) in the
**whole window**, not k, and not the micro-batch's own count. This module does exactly that:

* `accumulation_step(model, optimizer, micro_batches)` - one window, one optimizer step, whose
  gradient equals the gradient of the token-mean cross-entropy over every labelled position of
  the window (-100 = ignored), however the tokens are spread over the micro-batches;
* `GradientAccumulator(model, optimizer, k).train(batches)` - walks batches in windows of k,
  the last (partial) window included, each normalized by its own token count;
* `streaming_accumulation_step(model, optimizer, stream)` - the same step over a stream read one
  micro-batch at a time (no lookahead: the token count is known only at the end, so the summed
  gradients are divided by it after the last backward, as Megatron-LM's per-token loss does);
* with a GradScaler (`torch.amp.GradScaler` or anything with its interface: scale, unscale_,
  step, update): every micro-batch loss is scaled; unscale_, clipping, step and update happen once
  per window; with a scheduler: one `scheduler.step()` per optimizer step;

Both are thin wrappers around the library's one step, `training.training_step`, which does the token
normalisation; this module names the chapter's ideas (`windows`, `split_batch`) and its exercise API.
(`accumulation_explorer.profile_accumulation` measures time and memory per micro-batch size.)

Normalizing by the window's token count is what Hugging Face transformers does since the 2024
fix (PR #34191, `num_items_in_batch`): before it, trainers averaged per-micro-batch token means,
which weights a token in a short micro-batch more than one in a long micro-batch.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable, Sequence

import torch

# absolute imports: the graders load this file by path
from efftrain_lib.losses import IGNORE_INDEX, check_logits_labels, count_labelled, summed_loss
from efftrain_lib.training import Batch, check_step_options, train_windows, training_step

__all__ = [
    "IGNORE_INDEX",
    "GradientAccumulator",
    "accumulation_step",
    "check_logits_labels",
    "count_labelled",
    "split_batch",
    "streaming_accumulation_step",
    "summed_loss",
    "windows",
]


# ----------------------------------------------------------------------------------------------
# One window, one step
# ----------------------------------------------------------------------------------------------


def accumulation_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Batch],
    *,
    scaler=None,
    max_grad_norm: float | None = None,
    scheduler=None,
    autocast_dtype: torch.dtype | None = None,
    meter=None,
) -> float:
    """One optimizer step over a window of micro-batches; returns the window's token-mean loss.
    Exercise 4.1's API, on the library's one step (`training.training_step`).

    micro_batches: a list of (inputs, labels); `model(inputs)` returns logits [..., num_classes],
                   labels have the logits' leading shape, -100 marks positions to ignore.
    The step's gradient equals the gradient of the token-mean cross-entropy over every labelled
    position of the window (one big batch), however unequal the micro-batches' token counts. The
    window starts from zero gradients (zero_grad first) and leaves none behind (zero_grad after).
    scaler:         a GradScaler (or the same interface): each micro-batch loss is scaled; unscale_
                    (when clipping), clip, step and update run once, at the end of the window.
    max_grad_norm:  clip the window's gradient (unscaled) to this norm before the step.
    scheduler:      stepped once, after the optimizer step (one scheduler step per optimizer step).
    autocast_dtype: None (fp32), torch.bfloat16 or torch.float16 (fp16 wants a scaler): forward under
                    torch.autocast.
    meter:          a MemoryMeter: the whole window is one recorded step, marked per micro-batch.

    Errors (ValueError, before any optimizer step): an empty window, a window with no labelled
    position (its token mean is 0/0), labels whose shape does not match the logits.
    """
    return training_step(model, optimizer, micro_batches, scaler=scaler, max_grad_norm=max_grad_norm,
                         scheduler=scheduler, autocast_dtype=autocast_dtype, meter=meter).loss


def streaming_accumulation_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[Batch],
    *,
    scaler=None,
    max_grad_norm: float | None = None,
    scheduler=None,
    autocast_dtype: torch.dtype | None = None,
    meter=None,
) -> float:
    """`accumulation_step` over a stream: each micro-batch is read only after the previous one's backward,
    so one micro-batch is held at a time, however long the window. Exercise 4.3's API, on the library's
    one step (`training.training_step(..., lookahead=False)`, which says how). Same options, same
    result up to rounding, same errors (an empty stream, no labelled position: ValueError, no step)."""
    return training_step(model, optimizer, micro_batches, scaler=scaler, max_grad_norm=max_grad_norm,
                         scheduler=scheduler, autocast_dtype=autocast_dtype, meter=meter, lookahead=False).loss


def windows(batches: Iterable[Batch], accumulation_steps: int):
    """Yield lists of `accumulation_steps` consecutive batches; the last may be shorter (partial)."""
    _check_steps(accumulation_steps)
    iterator = iter(batches)
    while window := list(itertools.islice(iterator, accumulation_steps)):
        yield window


def _check_steps(accumulation_steps) -> None:
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")


class GradientAccumulator:
    """Train in windows of `accumulation_steps` micro-batches, one optimizer step per window.
    Exercise 4.2's API, on the library's loop (`training.train_windows`).

    `train(batches)` walks any sequence or iterator of (inputs, labels), including a final
    partial window, normalizing every window by its own labelled-token count; returns the
    token-mean loss of every window. Counters: `optimizer_steps`, `micro_batches_seen`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        accumulation_steps: int,
        *,
        scaler=None,
        max_grad_norm: float | None = None,
        scheduler=None,
        autocast_dtype: torch.dtype | None = None,
    ):
        _check_steps(accumulation_steps)
        self.model = model
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.step_options = dict(scaler=scaler, max_grad_norm=max_grad_norm, scheduler=scheduler,
                                 autocast_dtype=autocast_dtype)
        check_step_options(**self.step_options)  # refused now, not at the first window
        self.optimizer_steps = 0
        self.micro_batches_seen = 0

    def train(
        self,
        batches: Iterable[Batch],
        *,
        meter=None,
        on_step: Callable[[int, float], None] | None = None,
        progress: bool = False,
        desc: str = "accumulate",
    ) -> list[float]:
        """One optimizer step per window of batches; returns each window's token-mean loss.

        meter / on_step: as in `training.train` (one meter record and one callback per window).
        """
        total = math.ceil(len(batches) / self.accumulation_steps) if hasattr(batches, "__len__") else None

        def counted(windows_):
            for window in windows_:
                yield window
                self.optimizer_steps += 1  # resumes only after the window's step has run
                self.micro_batches_seen += len(window)

        log = train_windows(self.model, self.optimizer, counted(windows(batches, self.accumulation_steps)),
                            total=total, meter=meter, on_step=on_step, progress=progress, desc=desc,
                            **self.step_options)
        if not log.losses:
            raise ValueError("batches is empty: there is no window to train on")
        return log.losses


# ----------------------------------------------------------------------------------------------
# Cutting a batch into micro-batches
# ----------------------------------------------------------------------------------------------


def split_batch(batch: Batch, micro_batch_size: int) -> list[Batch]:
    """Cut (inputs, labels) along dim 0 into micro-batches of `micro_batch_size` (the last may be smaller)."""
    inputs, labels = batch
    if not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be an integer >= 1, got {micro_batch_size!r}")
    if len(inputs) != len(labels):
        raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) have different batch sizes")
    return list(zip(inputs.split(micro_batch_size), labels.split(micro_batch_size)))

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
* with a GradScaler (`torch.amp.GradScaler` or anything with its interface: scale, unscale_,
  step, update): every micro-batch loss is scaled; unscale_, clipping, step and update happen once
  per window; with a scheduler: one `scheduler.step()` per optimizer step;
* `profile_accumulation(...)` measures time per effective batch and peak memory per micro-batch size.

Normalizing by the window's token count is what Hugging Face transformers does since the 2024
fix (PR #34191, `num_items_in_batch`): before it, trainers averaged per-micro-batch token means,
which weights a token in a short micro-batch more than one in a long micro-batch.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from efftrain_lib.devices import autocast as autocast_ctx
from efftrain_lib.meter import MemoryBreakdown, MemoryMeter, model_device

IGNORE_INDEX = -100
Batch = tuple[torch.Tensor, torch.Tensor]

__all__ = [
    "IGNORE_INDEX",
    "AccumulationProfile",
    "GradientAccumulator",
    "accumulation_step",
    "check_logits_labels",
    "count_labelled",
    "gradient_dict",
    "max_abs_diff",
    "profile_accumulation",
    "split_batch",
    "summed_loss",
    "windows",
]


# ----------------------------------------------------------------------------------------------
# The loss, normalized by the window
# ----------------------------------------------------------------------------------------------


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


def _check_window(micro_batches) -> list[Batch]:
    if isinstance(micro_batches, (str, bytes)) or not isinstance(micro_batches, Iterable):
        raise ValueError(f"micro_batches must be a list of (inputs, labels) pairs, got {type(micro_batches).__name__}")
    window = list(micro_batches)
    if not window:
        raise ValueError("empty window: accumulation_step needs at least one (inputs, labels) micro-batch")
    for i, pair in enumerate(window):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], torch.Tensor)):
            raise ValueError(f"micro-batch {i} must be a pair (inputs, labels) with labels a tensor, got {pair!r:.80}")
    return window


def _check_scaler(scaler) -> None:
    if scaler is None:
        return
    missing = [name for name in ("scale", "unscale_", "step", "update") if not callable(getattr(scaler, name, None))]
    if missing:
        raise ValueError(
            f"scaler must have GradScaler's interface (scale, unscale_, step, update); "
            f"{type(scaler).__name__} lacks {missing}"
        )


def _check_max_grad_norm(max_grad_norm) -> None:
    if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be a positive number or None, got {max_grad_norm!r}")


def _optimizer_parameters(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _mark(meter, label: str) -> None:
    if meter is not None:
        meter.mark(label)


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
    use_autocast: bool = False,
    autocast_dtype: torch.dtype | None = None,
    meter: MemoryMeter | None = None,
) -> float:
    """One optimizer step over a window of micro-batches; returns the window's token-mean loss.

    micro_batches: a list of (inputs, labels); `model(inputs)` returns logits [..., num_classes],
                   labels have the logits' leading shape, -100 marks positions to ignore.
    The step's gradient equals the gradient of the token-mean cross-entropy over every labelled
    position of the window (one big batch), however unequal the micro-batches' token counts. The
    window starts from zero gradients (zero_grad first) and leaves none behind (zero_grad after).
    scaler:        a GradScaler (or the same interface): each micro-batch loss is scaled; unscale_
                   (when clipping), clip, step and update run once, at the end of the window.
    max_grad_norm: clip the window's gradient (unscaled) to this norm before the step.
    scheduler:     stepped once, after the optimizer step (one scheduler step per optimizer step).
    use_autocast / autocast_dtype: forward under torch.autocast (default dtype: bf16 on CPU and on GPUs
                   that support it, else fp16; pass torch.float16 to force fp16 with a GradScaler).
    meter:         a MemoryMeter: the whole window is one recorded step, marked per micro-batch.

    Errors (ValueError, before any optimizer step): an empty window, a window with no labelled
    position (its token mean is 0/0), labels whose shape does not match the logits.
    """
    window = _check_window(micro_batches)
    _check_scaler(scaler)
    _check_max_grad_norm(max_grad_norm)
    # The normalizer is known before any forward: the labels alone say how many positions count.
    n_labelled = sum(count_labelled(labels) for _, labels in window)
    if n_labelled == 0:
        raise ValueError(
            f"window of {len(window)} micro-batch(es) has no labelled position (every label is {IGNORE_INDEX}): "
            "its token-mean loss is 0/0; drop the window or check the padding"
        )
    device = model_device(model)
    optimizer.zero_grad(set_to_none=True)  # the window's gradient starts from nothing
    recording = meter.step(model, optimizer) if meter is not None else contextlib.nullcontext()
    with recording:
        total = torch.zeros((), dtype=torch.float32, device=device)
        for i, (inputs, labels) in enumerate(window, start=1):
            inputs, labels = inputs.to(device), labels.to(device)
            with autocast_ctx(device, enabled=use_autocast, dtype=autocast_dtype):
                logits = model(inputs)
            try:
                check_logits_labels(logits, labels)
            except ValueError as error:
                optimizer.zero_grad(set_to_none=True)  # no half-accumulated gradient is left behind
                raise ValueError(f"micro-batch {i - 1}: {error}") from None
            # Sum over this micro-batch's tokens / tokens of the whole window: the k pieces add up
            # to the window's token mean, and so do their gradients.
            loss = summed_loss(logits, labels) / n_labelled
            _mark(meter, f"forward {i}")
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.detach()
            _mark(meter, f"backward {i}")
        if max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
            torch.nn.utils.clip_grad_norm_(
                [p for p in _optimizer_parameters(optimizer) if p.grad is not None], max_grad_norm
            )
        if scaler is not None:
            scaler.step(optimizer)  # skips the step if the window produced inf/NaN
            scaler.update()  # once per window: one scale for every micro-batch of a window
        else:
            optimizer.step()
        _mark(meter, "optimizer step")
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return total.item()


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
        use_autocast: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ):
        _check_steps(accumulation_steps)
        _check_scaler(scaler)
        _check_max_grad_norm(max_grad_norm)
        self.model = model
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.scaler = scaler
        self.max_grad_norm = max_grad_norm
        self.scheduler = scheduler
        self.use_autocast = use_autocast
        self.autocast_dtype = autocast_dtype
        self.optimizer_steps = 0
        self.micro_batches_seen = 0

    def train(
        self,
        batches: Iterable[Batch],
        *,
        meter: MemoryMeter | None = None,
        on_step: Callable[[int, float], None] | None = None,
        progress: bool = False,
        desc: str = "accumulate",
    ) -> list[float]:
        """One optimizer step per window of batches; returns each window's token-mean loss.

        meter / on_step: as in `training.train` (one meter record and one callback per window).
        """
        total = None
        if hasattr(batches, "__len__"):
            total = math.ceil(len(batches) / self.accumulation_steps)
        self.model.train()
        losses: list[float] = []
        bar = tqdm(windows(batches, self.accumulation_steps), total=total, desc=desc, disable=not progress,
                   leave=False)
        for window in bar:
            loss = accumulation_step(
                self.model, self.optimizer, window, scaler=self.scaler, max_grad_norm=self.max_grad_norm,
                scheduler=self.scheduler, use_autocast=self.use_autocast, autocast_dtype=self.autocast_dtype,
                meter=meter,
            )
            self.optimizer_steps += 1
            self.micro_batches_seen += len(window)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}")
            if on_step is not None:
                on_step(len(losses) - 1, loss)
        if not losses:
            raise ValueError("batches is empty: there is no window to train on")
        return losses


# ----------------------------------------------------------------------------------------------
# Comparing gradients
# ----------------------------------------------------------------------------------------------


def gradient_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter's .grad, by name (parameters without one are left out)."""
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest |a - b| over two gradient dicts with the same names."""
    if set(a) != set(b):
        raise ValueError(f"gradient dicts name different parameters: {sorted(set(a) ^ set(b))[:4]}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ----------------------------------------------------------------------------------------------
# Measuring: time per effective batch and peak memory, by micro-batch size
# ----------------------------------------------------------------------------------------------


def split_batch(batch: Batch, micro_batch_size: int) -> list[Batch]:
    """Cut (inputs, labels) along dim 0 into micro-batches of `micro_batch_size` (the last may be smaller)."""
    inputs, labels = batch
    if not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be an integer >= 1, got {micro_batch_size!r}")
    if len(inputs) != len(labels):
        raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) have different batch sizes")
    return list(zip(inputs.split(micro_batch_size), labels.split(micro_batch_size)))


@dataclass(frozen=True)
class AccumulationProfile:
    """One configuration's measurement: k micro-batches of b make one effective batch."""

    micro_batch_size: int
    accumulation_steps: int
    seconds_per_window: float  # median wall time of one optimizer step (all k micro-batches)
    peak: MemoryBreakdown  # the window's peak, by category, with its source

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.accumulation_steps

    @property
    def peak_bytes(self) -> int:
        return self.peak.total


def profile_accumulation(
    model: torch.nn.Module,
    batch: Batch,
    micro_batch_sizes: Sequence[int],
    *,
    make_optimizer: Callable = lambda params: torch.optim.AdamW(params, lr=1e-3),
    repeats: int = 3,
    use_autocast: bool = False,
    progress: bool = True,
) -> list[AccumulationProfile]:
    """Time and memory of one effective batch, cut into micro-batches of each size.

    Each configuration trains its own copy of `model`. Memory: one window under a MemoryMeter (CPU:
    exact accounting; CUDA: the allocator). Time: the median of `repeats` windows without the meter
    (after one warm-up window), timed in interleaved rounds (every configuration once per round, the
    order reversed every other round) so that a burst of load on a shared machine hits all alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    size = len(batch[0])
    bad = [b for b in micro_batch_sizes if not isinstance(b, int) or b < 1 or size % b]
    if bad or not micro_batch_sizes:
        raise ValueError(f"micro-batch sizes must divide the effective batch ({size}); got {list(micro_batch_sizes)}")
    device = model_device(model)
    setups, peaks = [], {}
    for micro in micro_batch_sizes:
        trial = copy.deepcopy(model)
        optimizer = make_optimizer([p for p in trial.parameters() if p.requires_grad])
        window = split_batch(batch, micro)
        accumulation_step(trial, optimizer, window, use_autocast=use_autocast)  # warm-up, creates Adam state
        meter = MemoryMeter()
        accumulation_step(trial, optimizer, window, use_autocast=use_autocast, meter=meter)
        peaks[micro] = meter.last.peak
        setups.append((micro, trial, optimizer, window))
    seconds: dict[int, list[float]] = {micro: [] for micro in micro_batch_sizes}
    for round_ in tqdm(range(repeats), desc="timing rounds", disable=not progress, leave=False):
        for micro, trial, optimizer, window in (setups if round_ % 2 == 0 else setups[::-1]):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            accumulation_step(trial, optimizer, window, use_autocast=use_autocast)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[micro].append(time.perf_counter() - start)
    return [AccumulationProfile(micro, size // micro, statistics.median(seconds[micro]), peaks[micro])
            for micro in micro_batch_sizes]

"""One training step and one loop, readable in one sitting. Every chapter trains through them, so
timings and memory are measured the same way everywhere.

    result = training_step(model, optimizer, micro_batches)        # one optimizer step over a window
    log = train(model, get_batch, steps=100, optimizer=optimizer)  # the loop around it (tqdm, timing)

One step over a window of k micro-batches (k = 1 is a plain step) is nanoGPT's micro-step loop
(karpathy/nanoGPT train.py), with the window normalised by its labelled tokens:

    zero_grad
    for each micro-batch:  forward under autocast, loss / (labelled tokens of the whole window),
                           scaler.scale(loss).backward()       gradients add up in .grad
    scaler.unscale_ (only when clipping: the clip must see true gradients), clip,
    scaler.step (skipped if a gradient is inf/NaN), scaler.update, scheduler.step, zero_grad

Without a scaler a disabled torch.amp.GradScaler stands in, as in nanoGPT: its scale, unscale_ and
update do nothing and its step() just steps, so one code path serves fp32, bf16 and fp16.

The chapters' own entry points (`precision.train_step`, `accumulation.accumulation_step`,
`accumulation.GradientAccumulator`, `meter.measure_step`) are thin wrappers around `training_step`.
It knows nothing about LoRA or checkpointing: those change the model, not the step.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from .devices import autocast, check_autocast_dtype, model_device
from .losses import IGNORE_INDEX, check_logits_labels, count_labelled, language_model_loss, summed_loss

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["Batch", "StepResult", "TrainLog", "check_step_options", "evaluate", "train", "train_windows",
           "trainable_parameters", "training_step"]


class StepResult(NamedTuple):
    """What one optimizer step did: the window's loss, and whether the optimizer stepped (a scaler
    skips the step when a gradient is inf/NaN)."""

    loss: float
    stepped: bool


@dataclass
class TrainLog:
    """What one run produced, step by step: loss, wall time, the loss scale in force (1.0 without a
    scaler) and whether the optimizer stepped."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    stepped: list[bool] = field(default_factory=list)

    @property
    def median_step_seconds(self) -> float:
        times = sorted(self.step_seconds[1:] or self.step_seconds)  # the first step pays warm-up
        return times[len(times) // 2] if times else float("nan")

    @property
    def skipped_steps(self) -> list[int]:
        return [i for i, ok in enumerate(self.stepped) if not ok]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    micro_batches: Iterable[Batch],
    *,
    loss_fn: LossFn | None = None,
    autocast_dtype: torch.dtype | None = None,
    scaler=None,
    max_grad_norm: float | None = None,
    scheduler=None,
    meter=None,
    normaliser: Callable[[int], float] | None = None,
    lookahead: bool = True,
) -> StepResult:
    """One optimizer step over a window of micro-batches [(inputs, labels), ...]; returns its loss.

    loss_fn:        None: next-token cross-entropy, normalised by the window's labelled tokens (labels
                    -100 ignored), so the step's gradient is the token mean over the whole window,
                    however the tokens are spread over micro-batches. Or a callable
                    loss_fn(outputs, targets) -> the mean loss of one batch (any loss): windows of one
                    micro-batch only, since a mean cannot be re-weighted by tokens it does not report.
    autocast_dtype: None (fp32), torch.bfloat16 or torch.float16: forward under torch.autocast.
    scaler:         a torch.amp.GradScaler or anything with its interface (scale, unscale_, step,
                    update, get_scale): every micro-batch loss is scaled; unscale_ (when clipping),
                    step and update run once, at the end of the window.
    max_grad_norm:  clip the window's (unscaled) gradient to this norm before the step.
    scheduler:      stepped once, after the optimizer step.
    meter:          a MemoryMeter: the window is one recorded step, marked after every forward and
                    backward ("forward", or "forward 1".."forward k" for k > 1), after clipping ("clip")
                    and after the step ("optimizer step").
    optimizer=None: forward and backward only (to measure them); the gradients are then dropped.
    normaliser:     what the window's summed loss is divided by, given its labelled-token count (default:
                    that count). Data parallelism passes every rank's count / world size
                    (data_parallel.global_token_normaliser), since the ranks' gradients are then averaged.
    lookahead:      True: the window's labels are read before its first forward, to count its labelled
                    tokens. False: the micro-batches are read one at a time, each only after the previous
                    one's backward (a stream: a generator that tokenizes on the fly holds one micro-batch,
                    not k). The count is then known only after the last backward, so each micro-batch
                    backpropagates its summed loss and the window's gradients are divided by the count at
                    the end (Megatron-LM's per-token loss). The same gradient up to rounding; under fp16
                    the scaled sums are larger by the token count, so a scaler may back off more at first.
                    Marks are numbered ("forward 1", ...) whatever the window's length. A stream cannot
                    tell its last micro-batch before reading past it, so no_sync() is not used: the
                    gradients cross ranks after every micro-batch (the same sum, more traffic).

    A model with a `no_sync()` context (DistributedDataParallel, data_parallel.OverlappedDDP) runs every
    micro-batch but the window's last under it: the gradients cross ranks once per window, not once per
    micro-batch (nanoGPT's require_backward_grad_sync).

    The window starts from zero gradients and leaves none behind. Errors (ValueError, before any
    optimizer step): an empty window, a window with no labelled position (its token mean is 0/0),
    labels that do not fit the logits, a custom loss_fn over several micro-batches (or with lookahead=False).
    """
    check_step_options(scaler=scaler, max_grad_norm=max_grad_norm, scheduler=scheduler,
                       autocast_dtype=autocast_dtype)
    if optimizer is None and (scaler is not None or scheduler is not None or max_grad_norm is not None):
        raise ValueError("optimizer=None measures forward and backward only: scaler, scheduler and "
                         "max_grad_norm need an optimizer")
    if lookahead:
        window = _check_window(micro_batches)
        micro_loss = _micro_loss(window, loss_fn, normaliser)
        numbered = len(window) > 1
        pieces = _no_sync_but_last(model, window)
    else:
        window = _stream(micro_batches, loss_fn, on_error=lambda: _zero_grad(model, optimizer))
        micro_loss, numbered = summed_loss, True
        pieces = enumerate(window, start=1)
    device = model_device(model)
    if scaler is None:  # nanoGPT's trick: a disabled GradScaler removes every branch below
        scaler = torch.amp.GradScaler(device.type, enabled=False)
    _zero_grad(model, optimizer)
    recording = meter.step(model, optimizer) if meter is not None else contextlib.nullcontext()
    mark = meter.mark if meter is not None else _no_mark
    labelled = 0  # counted as the micro-batches come (lookahead=False)
    with recording:
        total = torch.zeros((), dtype=torch.float32, device=device)
        for i, (inputs, targets) in pieces:
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast(device, autocast_dtype):
                outputs = model(inputs)
            try:
                loss = micro_loss(outputs, targets)
            except ValueError as error:
                _zero_grad(model, optimizer)  # no half-accumulated gradient is left behind
                raise ValueError(f"micro-batch {i - 1}: {error}") from None
            # The loss saved what its backward needs: holding the logits through backward would cost
            # tokens x vocabulary more (1 GB for a batch of 8 x 2048 tokens of a 32k vocabulary in bf16).
            del outputs
            mark(f"forward {i}" if numbered else "forward")
            scaler.scale(loss).backward()
            total += loss.detach()
            del loss
            mark(f"backward {i}" if numbered else "backward")
            if not lookahead:
                labelled += count_labelled(targets)
        if not lookahead:
            labelled = normaliser(labelled) if normaliser is not None else labelled  # every rank calls it
            _divide_gradients(model, optimizer, labelled)  # the sums become the window's token mean
            total /= labelled
        stepped = True
        if optimizer is not None:
            if max_grad_norm is not None:
                _clip(optimizer, scaler, max_grad_norm)
                mark("clip")
            stepped = _optimizer_step(optimizer, scaler)
            mark("optimizer step")
            if scheduler is not None:
                scheduler.step()
        _zero_grad(model, optimizer)
    return StepResult(total.item(), stepped)


def _no_sync_but_last(model: torch.nn.Module, window: list[Batch]):
    """(i, micro-batch) from 1; every one but the last inside model.no_sync() when the model has one."""
    no_sync = getattr(model, "no_sync", None)
    for i, batch in enumerate(window, start=1):
        if callable(no_sync) and i < len(window):
            with no_sync():
                yield i, batch
        else:
            yield i, batch


def _micro_loss(window: list[Batch], loss_fn: LossFn | None, normaliser: Callable[[int], float] | None) -> LossFn:
    """The loss of one micro-batch, already divided so that the window's pieces add up to its mean."""
    if loss_fn is not None:
        if normaliser is not None:
            raise ValueError("normaliser divides the default token-summed loss; a custom loss_fn normalises itself")
        if len(window) > 1:
            raise ValueError(
                f"a custom loss_fn returns one batch's mean, which cannot be re-weighted across a window of "
                f"{len(window)} micro-batches; use loss_fn=None (the token-normalised cross-entropy) to accumulate")
        return loss_fn
    # The normaliser is known before any forward: the labels alone say how many positions count.
    n_labelled = sum(count_labelled(labels) for _, labels in window)
    if normaliser is not None:
        n_labelled = normaliser(n_labelled)
    if n_labelled == 0:
        raise ValueError(
            f"window of {len(window)} micro-batch(es) has no labelled position (every label is {IGNORE_INDEX}): "
            "its token-mean loss is 0/0; drop the window or check the padding")

    def token_normalised(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_logits_labels(logits, labels)
        return summed_loss(logits, labels) / n_labelled

    return token_normalised


def _stream(micro_batches, loss_fn: LossFn | None, on_error: Callable[[], None]):
    """The micro-batches of a window read one at a time (lookahead=False), each checked as it comes (a bad
    one calls on_error first: no half-accumulated gradient is left behind)."""
    if loss_fn is not None:
        raise ValueError("lookahead=False sums the token cross-entropy and divides by the window's labelled "
                         "tokens at the end: a custom loss_fn (one batch's mean) cannot be re-weighted; use loss_fn=None")
    if isinstance(micro_batches, (str, bytes)) or not isinstance(micro_batches, Iterable):
        raise ValueError(f"micro_batches must be an iterable of (inputs, labels) pairs, got {type(micro_batches).__name__}")

    def checked():
        for i, pair in enumerate(micro_batches):
            try:
                yield _check_pair(i, pair)
            except ValueError:
                on_error()
                raise

    return checked()


def _divide_gradients(model: torch.nn.Module, optimizer, labelled: int) -> None:
    """Divide the window's summed gradients by its labelled-token count (lookahead=False); refuse an
    empty window or one without a labelled position, leaving no gradient behind."""
    if labelled == 0:
        _zero_grad(model, optimizer)
        raise ValueError("the window is empty or has no labelled position (every label is "
                         f"{IGNORE_INDEX}): its token-mean loss is 0/0; drop the window or check the padding")
    params = model.parameters() if optimizer is None else (p for g in optimizer.param_groups for p in g["params"])
    for param in params:
        if param.grad is not None:
            param.grad.div_(labelled)


def _clip(optimizer, scaler, max_grad_norm: float) -> None:
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)


def _optimizer_step(optimizer, scaler) -> bool:
    """step (skipped by a scaler on inf/NaN), update; returns whether the optimizer stepped."""
    before = scaler.get_scale()
    result = scaler.step(optimizer)
    scaler.update()
    # Our LossScaler returns a bool. GradScaler returns optimizer.step()'s value (None) whether or not it
    # skipped: read the skip from the scale instead, since a skipped step always backs off.
    return result if isinstance(result, bool) else scaler.get_scale() >= before


def _zero_grad(model: torch.nn.Module, optimizer) -> None:
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)


def _no_mark(label: str) -> None:
    pass


def _check_window(micro_batches) -> list[Batch]:
    if isinstance(micro_batches, (str, bytes)) or not isinstance(micro_batches, Iterable):
        raise ValueError(f"micro_batches must be a list of (inputs, labels) pairs, got {type(micro_batches).__name__}")
    window = list(micro_batches)
    if not window:
        raise ValueError("empty window: a step needs at least one (inputs, labels) micro-batch")
    return [_check_pair(i, pair) for i, pair in enumerate(window)]


def _check_pair(i: int, pair) -> Batch:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], torch.Tensor)):
        raise ValueError(f"micro-batch {i} must be a pair (inputs, labels) with labels a tensor, got {pair!r:.80}")
    return pair


def check_step_options(*, scaler=None, max_grad_norm=None, scheduler=None, autocast_dtype=None) -> None:
    """Refuse a bad option of `training_step` up front (loops check once, before the first window)."""
    check_autocast_dtype(autocast_dtype)
    _check_scaler(scaler)
    _check_max_grad_norm(max_grad_norm)
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise ValueError(f"scheduler must have a step() method (a torch.optim.lr_scheduler), got {type(scheduler).__name__}")


def _check_scaler(scaler) -> None:
    if scaler is None:
        return
    missing = [name for name in ("scale", "unscale_", "step", "update", "get_scale")
               if not callable(getattr(scaler, name, None))]
    if missing:
        raise ValueError(f"scaler must have GradScaler's interface (scale, unscale_, step, update, get_scale); "
                         f"{type(scaler).__name__} lacks {missing}")


def _check_max_grad_norm(max_grad_norm) -> None:
    if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be a positive number or None, got {max_grad_norm!r}")


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def train_windows(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    windows: Iterable[Sequence[Batch]],
    *,
    total: int | None = None,
    meter=None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    **step_options,
) -> TrainLog:
    """One `training_step` per window of micro-batches, with a progress bar and per-step timing.

    step_options: training_step's options (loss_fn, autocast_dtype, scaler, max_grad_norm, scheduler).
    meter:   a MemoryMeter; each step is one recorded meter step.
    on_step: called as on_step(step, loss) after every step (live plots hook in here).
    """
    device = model_device(model)
    scaler = step_options.get("scaler")
    model.train()
    log = TrainLog()
    bar = tqdm(windows, total=total, desc=desc, disable=not progress, leave=False)
    for step, window in enumerate(bar):
        log.scales.append(scaler.get_scale() if scaler is not None else 1.0)
        start = time.perf_counter()
        loss, stepped = training_step(model, optimizer, window, meter=meter, **step_options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log.step_seconds.append(time.perf_counter() - start)
        log.losses.append(loss)
        log.stepped.append(stepped)
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_step is not None:
            on_step(step, loss)
    return log


def train(
    model: torch.nn.Module,
    get_batch: Callable[[int], Batch],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    accumulation_steps: int = 1,
    **options,
) -> TrainLog:
    """Train for `steps` optimizer steps; each consumes `accumulation_steps` micro-batches, the i-th
    micro-batch of the run being `get_batch(i)`. options: those of `train_windows` and `training_step`
    (loss_fn, autocast_dtype, scaler, max_grad_norm, scheduler, meter, on_step, progress, desc)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
    check_step_options(**{k: v for k, v in options.items()
                          if k in ("scaler", "max_grad_norm", "scheduler", "autocast_dtype")})
    k = accumulation_steps
    windows = ([get_batch(step * k + j) for j in range(k)] for step in range(steps))
    return train_windows(model, optimizer, windows, total=steps, **options)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Batch], loss_fn: LossFn = language_model_loss) -> float:
    """Mean loss over a fixed list of batches, in eval mode (dropout off)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    losses = [loss_fn(model(x.to(device)), y.to(device)).item() for x, y in batches]
    model.train(was_training)
    return sum(losses) / len(losses)

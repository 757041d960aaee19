"""A small training loop, readable in one sitting, with a tqdm progress bar.

Every chapter trains through this loop so that timings and memory are measured the same way.
It knows nothing about LoRA or checkpointing: those change the model, not the loop.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from .devices import autocast as autocast_ctx
from .models import language_model_loss

Batch = tuple[torch.Tensor, torch.Tensor]
StepFn = Callable[[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor, Callable[[str], None]], float]


@dataclass
class TrainLog:
    """What one run produced: the loss and wall time of every step."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def median_step_seconds(self) -> float:
        times = sorted(self.step_seconds[1:] or self.step_seconds)  # the first step pays warm-up
        return times[len(times) // 2] if times else float("nan")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def train(
    model: torch.nn.Module,
    get_batch: Callable[[int], Batch],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = language_model_loss,
    use_autocast: bool = False,
    max_grad_norm: float | None = None,
    meter=None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    step_fn: StepFn | None = None,
) -> TrainLog:
    """Train `model` for `steps` optimizer steps on batches from `get_batch(step)`.

    meter:   an efftrain_lib.meter.MemoryMeter; when given, each step runs inside `meter.step(...)`
             and is marked after forward, backward and the optimizer step.
    on_step: called as on_step(step, loss) after every step (live plots hook in here).
    step_fn: replaces the body of a step (a chapter's own step, e.g. one with a loss scaler), called as
             step_fn(model, optimizer, inputs, targets, mark) -> loss; it must call mark("forward"),
             mark("backward") and mark("optimizer step"). Default: forward, backward, clip, step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    model.train()
    log = TrainLog()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        inputs, targets = (t.to(device) for t in get_batch(step))
        start = time.perf_counter()
        step_context = meter.step(model, optimizer) if meter is not None else contextlib.nullcontext()
        mark = meter.mark if meter is not None else _no_mark
        with step_context:
            if step_fn is None:
                loss = _standard_step(model, optimizer, inputs, targets, mark, loss_fn, use_autocast, max_grad_norm)
            else:
                loss = step_fn(model, optimizer, inputs, targets, mark)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log.step_seconds.append(time.perf_counter() - start)
        log.losses.append(loss)
        bar.set_postfix(loss=f"{log.losses[-1]:.3f}")
        if on_step is not None:
            on_step(step, log.losses[-1])
    return log


def _standard_step(model, optimizer, inputs, targets, mark, loss_fn, use_autocast, max_grad_norm) -> float:
    with autocast_ctx(inputs.device, enabled=use_autocast):
        loss = loss_fn(model(inputs), targets)
    mark("forward")
    loss.backward()
    mark("backward")
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(trainable_parameters(model), max_grad_norm)
    optimizer.step()
    mark("optimizer step")
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _no_mark(label: str) -> None:
    pass


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Batch], loss_fn=language_model_loss) -> float:
    """Mean loss over a fixed list of batches, in eval mode (dropout off)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = [loss_fn(model(x.to(device)), y.to(device)).item() for x, y in batches]
    model.train(was_training)
    return sum(losses) / len(losses)

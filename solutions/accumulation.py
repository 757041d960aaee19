"""Chapter 4 reference solutions: gradient accumulation that is exactly a big batch.

The whiteboard version: short and commented. The hardened version (validation, meter hooks,
progress bars, profiling) lives in efftrain_lib/accumulation.py, on the library's one training step.
Grade these with
    python -m efftrain_lib.grade accumulation --impl solutions
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _summed_loss(model, optimizer, inputs, labels, autocast_dtype):
    """Forward one micro-batch (under autocast if asked) and sum its cross-entropy in fp32."""
    with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(inputs)
    if labels.shape != logits.shape[:-1]:
        optimizer.zero_grad(set_to_none=True)  # leave no half-accumulated gradient behind
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of shape "
                         f"{tuple(logits.shape)}: expected {tuple(logits.shape[:-1])}")
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def _finish_window(optimizer, scaler, max_grad_norm, scheduler):
    """Once per window: unscale, clip, step, update, schedule."""
    if max_grad_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)  # unscales if needed; skips the step on inf/NaN
        scaler.update()  # once per window: a mid-window update would mix two scales in .grad
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()  # one scheduler step per optimizer step, not per micro-batch
    optimizer.zero_grad(set_to_none=True)


# Exercise 4.1: accumulation_step ----------------------------------------------------------------
def accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None, scheduler=None,
                      autocast_dtype=None):
    """One optimizer step whose gradient is the token-mean cross-entropy over the whole window."""
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ValueError("empty window: need at least one (inputs, labels) micro-batch")
    # The big batch divides by ALL its labelled tokens, so we do too: count them before any forward.
    # (Dividing each micro-batch's own mean by k is the 2024 bug: wrong when token counts differ.)
    n_tokens = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in micro_batches)
    if n_tokens == 0:
        raise ValueError("the window has no labelled position (all labels are -100): its mean is 0/0")

    optimizer.zero_grad(set_to_none=True)  # once per window, never inside the loop
    total = 0.0
    for inputs, labels in micro_batches:
        # Sum over this micro-batch's tokens / tokens of the whole window: the pieces add up to the mean.
        loss = _summed_loss(model, optimizer, inputs, labels, autocast_dtype) / n_tokens
        if scaler is not None:
            scaler.scale(loss).backward()  # scale every micro-batch: all k share one scale
        else:
            loss.backward()  # .grad += this piece's gradient
        total += loss.item()
    _finish_window(optimizer, scaler, max_grad_norm, scheduler)
    return total


# Exercise 4.2: GradientAccumulator --------------------------------------------------------------
class GradientAccumulator:
    """Walk batches in windows of k; the last window may be shorter and is normalized by itself."""

    def __init__(self, model, optimizer, accumulation_steps, *, scaler=None, max_grad_norm=None, scheduler=None,
                 autocast_dtype=None):
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
        self.model, self.optimizer, self.k = model, optimizer, accumulation_steps
        self.step_kwargs = dict(scaler=scaler, max_grad_norm=max_grad_norm, scheduler=scheduler,
                                autocast_dtype=autocast_dtype)

    def train(self, batches):
        losses, window = [], []
        for batch in batches:
            window.append(batch)
            if len(window) == self.k:
                losses.append(accumulation_step(self.model, self.optimizer, window, **self.step_kwargs))
                window = []
        if window:  # the final partial window: its own token count, not k micro-batches' worth
            losses.append(accumulation_step(self.model, self.optimizer, window, **self.step_kwargs))
        return losses


# Exercise 4.3: streaming_accumulation_step ------------------------------------------------------
def streaming_accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None,
                                scheduler=None, autocast_dtype=None):
    """accumulation_step over a stream: each micro-batch is read after the previous one's backward."""
    optimizer.zero_grad(set_to_none=True)
    n_tokens, total = 0, 0.0
    for inputs, labels in micro_batches:  # one at a time: the window's token count is known only at the end
        loss = _summed_loss(model, optimizer, inputs, labels, autocast_dtype)  # not divided: by what, yet?
        (scaler.scale(loss) if scaler is not None else loss).backward()
        n_tokens += int((labels != IGNORE_INDEX).sum())
        total += loss.item()
    if n_tokens == 0:
        optimizer.zero_grad(set_to_none=True)
        raise ValueError("empty stream, or no labelled position (all labels are -100): the token mean is 0/0")
    # Gradients are linear in the loss: dividing the summed gradients by the count now gives what dividing
    # every micro-batch's loss by it would have (Megatron-LM's per-token loss). Before unscale_ and the clip,
    # which must see the window's mean gradient; dividing a (scaled) inf/NaN leaves it inf/NaN for the scaler.
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.div_(n_tokens)
    _finish_window(optimizer, scaler, max_grad_norm, scheduler)
    return total / n_tokens

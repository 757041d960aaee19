"""Mistake: zero_grad before every backward: only the last micro-batch's gradient reaches the step.

The reference solution's accumulation_step with one change (marked BUG); GradientAccumulator is the
solution's, so it inherits the mistake.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "accumulation.py")
IGNORE_INDEX = -100

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "equal micro-batches: the gradient equals the full batch": ["zero_grad inside the window"],
    "unequal token counts: the gradient equals the full batch": ["zero_grad inside the window"],
    "two windows in a row: gradients do not leak": ["zero_grad inside the window"],
    "clipping: the window's gradient, clipped once": ["zero_grad inside the window"],
    "GradScaler: scale every micro-batch, step and update once": ["zero_grad inside the window"],
    "GradScaler + clipping: unscale_ before clipping": ["zero_grad inside the window"],
    "every window equals a full-batch step, the partial one too": ["zero_grad inside the window"],
    "unequal token counts: each window normalized by its own token count": ["zero_grad inside the window"],
    "training equals full-batch training (SGD with momentum)": [],
    "GradScaler: one update per window": ["zero_grad inside the window"],
    "options together: autocast dtype x GradScaler x clipping x scheduler x window": ["zero_grad inside the window"],
    "options together: autocast dtype x GradScaler x clipping x scheduler, every window": ["zero_grad inside the window"],
}


def accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None, scheduler=None,
                      autocast_dtype=None):
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ValueError("empty window: need at least one (inputs, labels) micro-batch")
    n_tokens = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in micro_batches)
    if n_tokens == 0:
        raise ValueError("the window has no labelled position (all labels are -100): its mean is 0/0")

    optimizer.zero_grad(set_to_none=True)  # once per window, never inside the loop
    total = 0.0
    for inputs, labels in micro_batches:
        optimizer.zero_grad(set_to_none=True)  # BUG: wipes what the window accumulated so far
        with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(inputs)
        if labels.shape != logits.shape[:-1]:
            optimizer.zero_grad(set_to_none=True)
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of shape "
                             f"{tuple(logits.shape)}: expected {tuple(logits.shape[:-1])}")
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum") / n_tokens
        if scaler is not None:
            scaler.scale(loss).backward()  # scale every micro-batch: all k share one scale
        else:
            loss.backward()  # .grad += this piece's gradient
        total += loss.item()

    # Once per window: unscale, clip, step, update, schedule.
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
    return total


_solution.accumulation_step = accumulation_step  # the solution's GradientAccumulator calls this one
GradientAccumulator = _solution.GradientAccumulator
streaming_accumulation_step = _solution.streaming_accumulation_step

"""Mistake: train_step unscales and calls optimizer.step() itself, so overflowing steps are taken."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'train_step skips the step on overflow and updates the scale':
        ['instead of optimizer.step()'],
    'train_step over a run equals the GradScaler recipe':
        ['follow the recipe'],
    "options together: autocast dtype x scaler x clipping x scheduler (equal to the library's step)":
        ['an overflowing batch', 'stepped'],
}


def train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
               autocast_dtype=torch.float16, scheduler=None):
    device_type = next(model.parameters()).device.type
    if scaler is None:
        scaler = torch.amp.GradScaler(device_type, enabled=False)
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    optimizer.step()  # BUG: bypasses the scaler's inf check
    scaler.update()
    stepped = True
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), stepped


LossScaler = _solution.LossScaler
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake: train_step never calls scaler.update(): the scale never adapts."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'train_step skips the step on overflow and updates the scale': ['did not back off'],
 'train_step over a run equals the GradScaler recipe': ['scaler.update']}

LossScaler = _solution.LossScaler


def train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
               autocast_dtype=torch.float16):
    with torch.autocast(next(model.parameters()).device.type, dtype=autocast_dtype):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    stepped = scaler.step(optimizer)
    # BUG: no scaler.update() (with a GradScaler-like scaler the next step() then raises)
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), stepped

"""Mistake: train_step unscales and calls optimizer.step() itself, so overflowing steps are taken."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {'train_step skips the step on overflow and updates the scale': ['instead of optimizer.step()']}

LossScaler = _solution.LossScaler


def train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
               autocast_dtype=torch.float16):
    with torch.autocast(next(model.parameters()).device.type, dtype=autocast_dtype):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    optimizer.step()  # BUG: bypasses the scaler's inf check
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), True

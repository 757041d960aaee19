"""Mistake: train_step clips only on the scaler's branch: without a scaler (fp32, bf16) max_grad_norm is dropped."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "options together: autocast dtype x scaler x clipping x scheduler (equal to the library's step)":
        ['no scaler + max_grad_norm', 'max_grad_norm dropped'],
}


def train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
               autocast_dtype=torch.float16, scheduler=None):
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = loss_fn(model(inputs), targets)
    if scaler is None:
        loss.backward()  # BUG: no clipping on this branch
        optimizer.step()
        stepped = True
    else:
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
        before = scaler.get_scale()
        stepped = scaler.step(optimizer)
        scaler.update()
        if not isinstance(stepped, bool):
            stepped = scaler.get_scale() >= before
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), stepped


LossScaler = _solution.LossScaler
stochastic_round_to_bf16 = _solution.stochastic_round_to_bf16

"""Mistake: train_step enters autocast only when a scaler is given (as if only fp16 needed it): bf16 without
a scaler runs in fp32."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "options together: autocast dtype x scaler x clipping x scheduler (equal to the library's step)":
        ['bf16 autocast + no scaler', 'ran in fp32'],
}


def train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
               autocast_dtype=torch.float16, scheduler=None):
    device_type = next(model.parameters()).device.type
    enabled = scaler is not None and autocast_dtype is not None  # BUG: autocast tied to the scaler
    if scaler is None:
        scaler = torch.amp.GradScaler(device_type, enabled=False)
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=enabled):
        loss = loss_fn(model(inputs), targets)
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

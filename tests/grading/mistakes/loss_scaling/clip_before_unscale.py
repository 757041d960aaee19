"""Mistake: train_step clips the gradients before unscaling them (it clips S x the true gradient)."""

import math  # noqa: F401
from pathlib import Path

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "loss_scaling.py")

# The checks that must fail, and words their message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'train_step clips the unscaled gradients':
        ['clipping before unscaling'],
    'train_step over a run equals the GradScaler recipe':
        ['follow the recipe'],
    "options together: autocast dtype x scaler x clipping x scheduler (equal to the library's step)":
        ['GradScaler + max_grad_norm', 'applied to scaled gradients'],
}


def train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
               autocast_dtype=torch.float16, scheduler=None):
    device_type = next(model.parameters()).device.type
    if scaler is None:
        scaler = torch.amp.GradScaler(device_type, enabled=False)
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    if max_grad_norm is not None:  # BUG: clip_grad_norm_ sees the scaled gradients
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

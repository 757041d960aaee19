"""Helpers of the loss_scaling grader (efftrain_lib/grading/loss_scaling.py): reference implementations, the
small models the checks run, and the diagnoses that name a learner's likely mistake. The checks themselves,
in the order the report shows them, are in the grader module."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grading import failed, passed
from efftrain_lib.precision import LossScaler as LibraryLossScaler

INIT = 2.0**10


INF, NAN = float("inf"), float("nan")


def _ref(**kwargs):
    return torch.amp.GradScaler("cpu", **kwargs)


def _scaler(impl, init_scale=INIT, growth_interval=2000, growth_factor=2.0, backoff_factor=0.5):
    return impl.LossScaler(init_scale=init_scale, growth_factor=growth_factor, backoff_factor=backoff_factor,
                           growth_interval=growth_interval)


def _param_and_opt(n=4, lr=0.5):
    param = nn.Parameter(torch.linspace(1.0, 2.0, n))
    return param, torch.optim.SGD([param], lr=lr)


def _backward(scaler, param, bad=None):
    """scale(loss).backward() for loss = sum(param * weights); optionally poison one gradient."""
    weights = torch.linspace(0.5, 1.5, param.numel())
    scaler.scale((param * weights).sum()).backward()
    if bad is not None:
        with torch.no_grad():
            param.grad[0] = bad


def _drive(scaler, pattern, lr=0.5):
    """One step per entry of `pattern` ("F" finite, "I" inf, "N" NaN): backward, step, update.

    Returns (scale after each update, indices of the steps where the parameter did not change)."""
    param, optimizer = _param_and_opt(lr=lr)
    scales, skipped = [], []
    for i, kind in enumerate(pattern):
        _backward(scaler, param, bad={"F": None, "I": INF, "N": NAN}[kind])
        before = param.detach().clone()
        scaler.step(optimizer)
        scaler.update()
        if torch.equal(before, param.detach()):
            skipped.append(i)
        scales.append(float(scaler.get_scale()))
        optimizer.zero_grad(set_to_none=True)
    return scales, skipped


def _fp32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _simulate(pattern, rule, init=INIT, interval=3, growth=2.0, backoff=0.5):
    """The scale after each update under a named update rule (the correct one and classic mistakes)."""
    scale, tracker, total_finite, out = init, 0, 0, []
    for kind in pattern:
        overflow = kind != "F"
        if rule == "update() does nothing":
            pass
        elif rule == "no backoff on overflow":
            if not overflow:
                tracker += 1
                if tracker == interval:
                    scale, tracker = scale * growth, 0
        elif rule == "growth counter not reset on overflow (growth counted over all finite steps, not consecutive ones)":
            if overflow:
                scale *= backoff
            else:
                total_finite += 1
                if total_finite % interval == 0:
                    scale *= growth
        elif rule == "growth counter counts overflowing steps too (growth without consecutive finite steps)":
            tracker += 1
            if overflow:
                scale *= backoff
            if tracker == interval:
                scale, tracker = scale * growth, 0
        elif rule == "growth counter not reset after growth (grows on every step after the first interval)":
            if overflow:
                scale, tracker = scale * backoff, 0
            else:
                tracker += 1
                if tracker >= interval:
                    scale *= growth
        elif rule == "growth_interval off by one (grows after growth_interval + 1 finite steps)":
            if overflow:
                scale, tracker = scale * backoff, 0
            else:
                tracker += 1
                if tracker > interval:
                    scale, tracker = scale * growth, 0
        elif rule == "correct":
            if overflow:
                scale, tracker = scale * backoff, 0
            else:
                tracker += 1
                if tracker == interval:
                    grown = _fp32(scale * growth)
                    scale = grown if math.isfinite(grown) else scale
                    tracker = 0
        out.append(scale)
    return out


_RULES = [
    "update() does nothing",
    "no backoff on overflow",
    "growth counter not reset on overflow (growth counted over all finite steps, not consecutive ones)",
    "growth counter counts overflowing steps too (growth without consecutive finite steps)",
    "growth counter not reset after growth (grows on every step after the first interval)",
    "growth_interval off by one (grows after growth_interval + 1 finite steps)",
]


def _diagnose(pattern, got, interval=3):
    """The classic wrong rules that reproduce `got` on this script ("A or B" when a script cannot tell)."""
    matches = [rule for rule in _RULES if _simulate(pattern, rule, interval=interval) == got]
    return " or ".join(matches) or None


def _fmt(scales) -> str:
    return "[" + ", ".join(f"{s:g}" for s in scales) + "]"


def _trajectory_check(impl, pattern, interval, what):
    got, _ = _drive(_scaler(impl, growth_interval=interval), pattern)
    want, _ = _drive(_ref(init_scale=INIT, growth_interval=interval), pattern)
    assert want == _simulate(pattern, "correct", interval=interval)  # the grader's own model of GradScaler
    detail = f"steps {pattern} (F finite, I inf, N NaN), growth_interval {interval}: scales {_fmt(got)}"
    if got == want:
        return passed(detail)
    rule = _diagnose(pattern, got, interval)
    hint = (f"your update rule looks like: {rule}. " if rule else "") + what
    return failed(f"{detail}; torch.amp.GradScaler gives {_fmt(want)}", hint)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=generator), torch.randn(32, 3, generator=generator)


INJECT = {2: INF, 3: NAN, 8: INF, 9: INF, 10: NAN}


def _full_run(scaler, steps=16, clip=0.5, fp16=True):
    """A tiny MLP under fp16 autocast, AdamW, unscale_ + clip, overflows injected at INJECT's steps."""
    model = _mlp()
    x, y = _data()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scales, skipped = [], []
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            loss = F.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        if step in INJECT:
            with torch.no_grad():
                model[0].weight.grad[1, 1] = INJECT[step]
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        before = model[2].weight.detach().clone()
        scaler.step(optimizer)
        scaler.update()
        if torch.equal(before, model[2].weight.detach()):
            skipped.append(step)
        scales.append(float(scaler.get_scale()))
        optimizer.zero_grad(set_to_none=True)
    return scales, skipped, [p.detach().clone() for p in model.parameters()]


_BAD_ARGUMENTS = [
    (dict(growth_factor=1.0), "growth_factor=1.0 (the scale could never grow back)"),
    (dict(growth_factor=0.5), "growth_factor=0.5"),
    (dict(backoff_factor=1.0), "backoff_factor=1.0 (an overflow would not lower the scale)"),
    (dict(backoff_factor=0.0), "backoff_factor=0.0 (the scale would collapse to 0)"),
    (dict(backoff_factor=2.0), "backoff_factor=2.0"),
    (dict(growth_interval=0), "growth_interval=0"),
    (dict(init_scale=INF), "init_scale=inf"),
    (dict(init_scale=NAN), "init_scale=nan"),
]


def _diagnose_run(impl) -> str | None:
    pattern = "".join("I" if i in INJECT else "F" for i in range(16))
    got, _ = _drive(_scaler(impl, growth_interval=3), pattern)
    rule = _diagnose(pattern, got, 3)
    return f"your update rule looks like: {rule}" if rule else None


def _loaded_without_tracker(impl, saver):
    state = dict(saver.state_dict())
    state["_growth_tracker"] = 0
    scaler = impl.LossScaler()
    scaler.load_state_dict(state)
    return scaler


def _library_scaler(**kwargs):
    return LibraryLossScaler(**kwargs)  # proven equal to GradScaler in tests/test_precision.py


def _reference_step(model, optimizer, scaler, x, y, max_grad_norm):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.mse_loss(model(x).float(), y)
    scaler.scale(loss).backward()
    norm = None
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm).item()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), norm


def _mse(output, target):
    return F.mse_loss(output.float(), target)

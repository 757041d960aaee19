"""Helpers of the loss_scaling grader (efftrain_lib/grading/loss_scaling.py): reference implementations, the
small models the checks run, and the diagnoses that name a learner's likely mistake. The checks themselves,
in the order the report shows them, are in the grader module."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grading import failed, passed
from efftrain_lib.precision import LossScaler as LibraryLossScaler
from efftrain_lib.training import training_step

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


def _autocast_now():
    """The autocast dtype in force on the CPU right now, None outside autocast (fp32)."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


# ------------------------------------------------- Exercise 3.3: two optimizers, every kind of parameter --
@dataclass(frozen=True)
class OptimizerCase:
    """One iteration with two optimizers A and B sharing one scaler (GradScaler's per-optimizer rules)."""

    explicit: bool  # unscale_(A), unscale_(B) before the steps, or let step() unscale
    overflow: str  # which optimizer's gradients hold inf/NaN in the first iteration: "none", "A", "B", "both"
    idle: bool  # A holds a parameter the loss does not use (its .grad stays None)
    groups: int  # A's parameters in 1 or 2 param groups (the overflow in A is in its last group)

    def __str__(self) -> str:
        return (f"{'unscale_ then step' if self.explicit else 'step unscales'}, overflow in "
                f"{ {'none': 'neither', 'both': 'both A and B'}.get(self.overflow, self.overflow)}, "
                f"{'a parameter without .grad in A' if self.idle else 'every parameter with a .grad'}, "
                f"A with {self.groups} param group{'s' if self.groups > 1 else ''}")


# Every pair of the four in 8 runs (tests/grading/test_loss_scaling_graders.py proves the pairs covered).
OPTIMIZER_CASES = [
    OptimizerCase(True, "A", True, 1), OptimizerCase(True, "B", False, 2), OptimizerCase(True, "both", True, 2),
    OptimizerCase(True, "none", True, 2), OptimizerCase(False, "A", False, 2), OptimizerCase(False, "B", True, 1),
    OptimizerCase(False, "both", False, 1), OptimizerCase(False, "none", False, 1),
]


def _two_optimizer_run(scaler, case: OptimizerCase) -> list[dict]:
    """Two iterations: scaled backward (inf/NaN injected in the first as the case says), unscale_ and step
    each optimizer, update. What each iteration left: gradients after an explicit unscale_, parameters, scale."""
    a1, a2, b = (nn.Parameter(torch.linspace(lo, lo + 1, n)) for lo, n in ((1.0, 4), (-1.0, 3), (0.5, 4)))
    idle = [nn.Parameter(torch.ones(2))] if case.idle else []
    groups = [{"params": [a1]}, {"params": [a2, *idle]}] if case.groups == 2 else [{"params": [a1, a2, *idle]}]
    opt_a, opt_b = torch.optim.SGD(groups, lr=0.5), torch.optim.SGD([b], lr=0.5)
    records = []
    for iteration in range(2):
        scaler.scale((a1 * torch.linspace(0.5, 1.5, 4)).sum() + (a2 * torch.linspace(1.0, 2.0, 3)).sum()
                     + (b * torch.linspace(-1.0, 1.0, 4)).sum()).backward()
        if iteration == 0:
            with torch.no_grad():
                if case.overflow in ("A", "both"):
                    a2.grad[0] = INF  # in A's last param group
                if case.overflow in ("B", "both"):
                    b.grad[1] = NAN
        record = {}
        if case.explicit:
            scaler.unscale_(opt_a)
            scaler.unscale_(opt_b)
            record["grads"] = [p.grad.clone() for p in (a1, a2, b)]
        scaler.step(opt_a)
        scaler.step(opt_b)
        scaler.update()
        record.update(params=[p.detach().clone() for p in (a1, a2, b)], scale=float(scaler.get_scale()))
        records.append(record)
        for optimizer in (opt_a, opt_b):
            optimizer.zero_grad(set_to_none=True)
    return records


def _equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """torch.equal, with NaN equal to NaN (an injected NaN stays NaN through unscale_)."""
    return torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(nan=0.0), y.nan_to_num(nan=0.0))


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(_equal(x, y) for x, y in zip(a, b))


def _optimizer_case_problem(case: OptimizerCase, got: list[dict], want: list[dict]) -> tuple[str, str] | None:
    """(what differs from GradScaler, the hint naming the likely mistake), or None when equal."""
    names = ("a1 (A)", "a2 (A, last group)", "b (B)")
    for iteration, (g, w) in enumerate(zip(got, want), start=1):
        if "grads" in w and not _same(g["grads"], w["grads"]):
            which = [n for n, x, y in zip(names, g["grads"], w["grads"]) if not _equal(x, y)]
            hint = ("unscale_ skipped A's second param group: walk every group in optimizer.param_groups"
                    if which == [names[1]] and case.groups == 2 else
                    "unscale_ must multiply every gradient of that optimizer (each param group) by 1/scale")
            return f"iteration {iteration}: gradients after unscale_ differ for {', '.join(which)}", hint
        if not _same(g["params"], w["params"]):
            moved = [n for n, x, y in zip(names, g["params"], w["params"]) if not _equal(x, y)]
            return f"iteration {iteration}: parameters after the steps differ from GradScaler's for " \
                   f"{', '.join(moved)}", _optimizer_hint(case, moved, g, w)
        if g["scale"] != w["scale"]:
            hint = ("update() backed off once per overflowing optimizer: back off once per iteration, if any "
                    "optimizer found inf/NaN" if g["scale"] < w["scale"] else
                    "update() must back off when any optimizer found inf/NaN since the last update()")
            return f"iteration {iteration}: scale {g['scale']:g}, GradScaler's {w['scale']:g}", hint
    return None


def _optimizer_hint(case: OptimizerCase, moved: list[str], got: dict, want: dict) -> str:
    b_should_step = case.overflow in ("none", "A")
    b_stepped = not torch.equal(got["params"][2], torch.linspace(0.5, 1.5, 4))
    if case.overflow == "A" and not b_stepped and b_should_step:
        return ("an overflow in A's gradients skipped B too: record found-inf per optimizer (as GradScaler), so "
                "step(B) skips only on B's own inf/NaN")
    if case.overflow == "B" and moved == ["a1 (A)", "a2 (A, last group)"]:
        return "an overflow in B's gradients skipped A too: record found-inf per optimizer"
    if "b (B)" in moved and b_stepped and not case.explicit:
        return ("step(B) used B's gradients still scaled: 'already unscaled' must be recorded per optimizer "
                "(unscale_(A) is not an unscale_ of B)")
    if moved == ["a2 (A, last group)"] and case.groups == 2:
        return "A's second param group was not unscaled or not checked for inf/NaN: walk every param group"
    return "step each optimizer as GradScaler does: unscale_ it unless done, skip it on its own inf/NaN"


# ------------------------------------------------------------ Exercise 3.4: every factor together --
# Every pair of (growth_factor, backoff_factor, growth_interval) in 9 runs, powers of two so that every
# scale is exact (proven to cover every pair in tests/grading/test_loss_scaling_graders.py).
FACTOR_CASES = [(2.0, 0.125, 3), (2.0, 0.25, 1), (2.0, 0.5, 2), (4.0, 0.125, 1), (4.0, 0.25, 2), (4.0, 0.5, 3),
                (8.0, 0.125, 2), (8.0, 0.25, 3), (8.0, 0.5, 1)]
FACTOR_PATTERN = "FFFIFFFFNIFFFFF"


def _factor_rule(pattern, growth, backoff, interval, grow=None, back=None):
    """The correct trajectory, or with the growth / backoff multipliers replaced (the classic mistakes)."""
    scale, tracker, out = INIT, 0, []
    for kind in pattern:
        if kind != "F":
            scale, tracker = scale * (back if back is not None else backoff), 0
        else:
            tracker += 1
            if tracker == interval:
                scale, tracker = scale * (grow if grow is not None else growth), 0
        out.append(scale)
    return out


def _factor_diagnosis(got, growth, backoff, interval) -> str | None:
    rules = {"backoff by 1/growth_factor (instead of backoff_factor)": dict(back=1 / growth),
             "growth_factor ignored (grows by 2)": dict(grow=2.0),
             "backoff_factor ignored (backs off by 0.5)": dict(back=0.5),
             "both factors ignored (2 and 0.5)": dict(grow=2.0, back=0.5)}
    for name, change in rules.items():
        if _factor_rule(FACTOR_PATTERN, growth, backoff, interval, **change) == got:
            return name
    return None


# ------------------------------------------------------------ Exercise 3.6: options together --
STEP_SCALE, STEP_CLIP = 2.0**8, 0.05
AUTOCAST_NAMES = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}


@dataclass(frozen=True)
class StepCase:
    """One combination of train_step's options, three steps on the grader's MLP."""

    dtype: torch.dtype | None
    scaler: str | None  # None, "GradScaler" (torch.amp.GradScaler("cpu")) or "LossScaler" (the library's)
    clip: bool  # max_grad_norm STEP_CLIP (below the gradient's norm) or None
    scheduler: bool  # a LambdaLR (lr / (step + 1)) or None
    overflow: bool  # the second batch's targets are 1e5 x larger: its scaled fp16 backward overflows

    def __str__(self) -> str:
        return " + ".join([AUTOCAST_NAMES[self.dtype], self.scaler or "no scaler",
                           f"max_grad_norm {STEP_CLIP}" if self.clip else "no clipping",
                           "scheduler" if self.scheduler else "no scheduler"]) + \
            (", an overflowing batch at step 2" if self.overflow else "")


# Every pair of (autocast dtype, scaler, clipping, scheduler, overflowing batch) in 8 runs, fp16 always with a
# scaler (tests/grading/test_loss_scaling_graders.py proves the pairs covered), and a ninth for the one triple
# only fp16 makes: a skipped step with a scheduler (the schedule still advances).
STEP_CASES = [
    StepCase(torch.bfloat16, "GradScaler", False, True, False), StepCase(torch.bfloat16, "LossScaler", False, False, True),
    StepCase(torch.bfloat16, None, True, False, False), StepCase(torch.float16, "GradScaler", True, False, True),
    StepCase(torch.float16, "LossScaler", False, True, False), StepCase(None, "GradScaler", True, True, True),
    StepCase(None, "LossScaler", True, False, False), StepCase(None, None, False, True, True),
    StepCase(torch.float16, "LossScaler", True, True, True),
]


class _LrRecorder(torch.optim.SGD):
    """SGD with momentum that records the learning rate of every step it takes."""

    def __init__(self, params):
        super().__init__(params, lr=0.1, momentum=0.9)
        self.lrs: list[float] = []

    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


@dataclass
class StepRun:
    """What three train_step calls did."""

    results: list = field(default_factory=list)  # (loss, stepped) per call
    lrs: list = field(default_factory=list)  # the lr of every optimizer step taken
    scales: list = field(default_factory=list)  # the scale after each call (None without a scaler)
    autocast: list = field(default_factory=list)  # the autocast dtype of every forward
    params: list = field(default_factory=list)  # the parameters at the end


def _step_batches(overflow: bool):
    generator = torch.Generator().manual_seed(7)
    batches = [(torch.randn(32, 6, generator=generator), torch.randn(32, 3, generator=generator)) for _ in range(3)]
    if overflow:
        batches[1] = (batches[1][0], batches[1][1] * 1e5)
    return batches


def _step_run(step, case: StepCase) -> StepRun:
    """Three calls of `step` (the learner's train_step or the library's) with the case's options."""
    model, run = _mlp(), StepRun()
    model.register_forward_pre_hook(lambda module, args: run.autocast.append(_autocast_now()))
    optimizer = _LrRecorder(model.parameters())
    scaler = {None: lambda: None, "GradScaler": lambda: _ref(init_scale=STEP_SCALE),
              "LossScaler": lambda: _library_scaler(init_scale=STEP_SCALE)}[case.scaler]()
    options = dict(max_grad_norm=STEP_CLIP if case.clip else None, autocast_dtype=case.dtype)
    if case.scheduler:  # passed only when on: a train_step without the option fails only these cases
        options["scheduler"] = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    for x, y in _step_batches(case.overflow):
        run.results.append(step(model, optimizer, scaler, x, y, _mse, **options))
        run.scales.append(None if scaler is None else float(scaler.get_scale()))
    run.lrs, run.params = optimizer.lrs, [p.detach().clone() for p in model.parameters()]
    return run


def _library_train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
                        autocast_dtype=None, scheduler=None):
    """The reference: the library's one training step on one batch."""
    return tuple(training_step(model, optimizer, [(inputs, targets)], loss_fn=loss_fn, autocast_dtype=autocast_dtype,
                               scaler=scaler, max_grad_norm=max_grad_norm, scheduler=scheduler))


def _step_problem(case: StepCase, got: StepRun, want: StepRun) -> tuple[str, str] | None:
    """(what differs from the library's step, a hint naming the dropped option), or None when equal."""
    if got.autocast != want.autocast:
        seen = sorted({AUTOCAST_NAMES.get(d, str(d)) for d in got.autocast})
        return (f"the forward ran in {', '.join(seen)}, not {AUTOCAST_NAMES[case.dtype]}",
                f"autocast_dtype dropped when {_others(case, 'dtype')}: run the forward under "
                "torch.autocast(device type, dtype=autocast_dtype) whatever the other options (None: no autocast)")
    if not all(isinstance(r, tuple) and len(r) == 2 for r in got.results):
        return f"train_step returned {got.results[0]!r:.60}", "return (loss.item(), stepped)"
    stepped, want_stepped = [r[1] for r in got.results], [r[1] for r in want.results]
    if stepped != want_stepped or not all(isinstance(s, bool) for s in stepped):
        hint = ("stepped must be a bool: torch.amp.GradScaler's step() returns None whether it stepped or not; "
                "read the skip from the scale (a skipped step always backs it off)"
                if case.scaler == "GradScaler" and None in stepped else
                "return whether the optimizer stepped (False when the scaler skipped the step)")
        return f"stepped {stepped}, the library's step gives {want_stepped}", hint
    if got.lrs != want.lrs:
        return (f"learning rates of the optimizer steps {[round(v, 4) for v in got.lrs]}, the library's "
                f"{[round(v, 4) for v in want.lrs]}", _scheduler_hint(case, got, want))
    if got.scales != want.scales:
        return (f"scale after each step {got.scales}, the library's {want.scales}",
                f"scaler.update() after every step (with {_others(case, 'scaler')})")
    losses, want_losses = [r[0] for r in got.results], [r[0] for r in want.results]
    if not math.isclose(float(losses[0]), want_losses[0], rel_tol=1e-6):  # same weights: the loss itself differs
        return f"first loss {losses[0]}, the library's {want_losses[0]}", "return loss.item() of the unscaled loss"
    diff = max((a - b).abs().max().item() for a, b in zip(got.params, want.params))
    top = max(p.abs().max().item() for p in want.params)
    if not diff <= 1e-6 + 1e-5 * top or not all(math.isclose(float(a), b, rel_tol=1e-6)
                                                  for a, b in zip(losses, want_losses)):
        return (f"parameters after 3 steps: max |diff| {diff:.3g} vs the library's step (losses {losses}, the "
                f"library's {want_losses})", _params_hint(case))
    return None


def _others(case: StepCase, option: str) -> str:
    """The case's other options, in words: where an option was dropped."""
    parts = {"dtype": AUTOCAST_NAMES[case.dtype], "scaler": case.scaler or "no scaler",
             "clip": f"max_grad_norm {STEP_CLIP}" if case.clip else "no clipping",
             "scheduler": "a scheduler" if case.scheduler else "no scheduler"}
    return " + ".join(v for k, v in parts.items() if k != option)


def _scheduler_hint(case: StepCase, got: StepRun, want: StepRun) -> str:
    if case.overflow and len(got.lrs) == len(want.lrs) and got.lrs[-1] > want.lrs[-1]:
        return ("the scheduler was not stepped on the skipped step: step it every iteration (the course's step, "
                "as torch's AMP recipe: a schedule counts iterations)")
    return f"scheduler.step() once per call, after the optimizer step (with {_others(case, 'scheduler')})"


def _params_hint(case: StepCase) -> str:
    if case.clip:
        return (f"max_grad_norm dropped or applied to scaled gradients when {_others(case, 'clip')}: unscale_ "
                "(with a scaler) then clip_grad_norm_ the optimizer's parameters, whatever the other options")
    return "the update differs from the library's step: forward, (scaled) backward, step, update, zero_grad"

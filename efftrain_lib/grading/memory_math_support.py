"""Helpers of the memory_math grader (efftrain_lib/grading/memory_math.py): the reference formulas, the
catalogs of classic mistakes each failing check compares the learner's outputs with (to name the mistake),
and, for Exercise 0.4, the reference itself: the optimizer step's temporaries measured by torch.profiler on
a real torch.optim step. The checks, in report order, are in the grader module."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from efftrain_lib.grading import failed, passed
from efftrain_lib.meter import profiler_peak_bytes

# ------------------------------------------------------------------------ 0.1: model states --
STATES = {"adam": 2, "sgd_momentum": 1, "sgd": 0}


def _states_model(n, w, g, opt, master, *, states=None, grads=True, master_on=None, state_bytes=None,
                  master_bytes=None, per_param=False, divisor=1):
    s = (states or STATES)[opt]
    use_master = master if master_on is None else master_on
    per = w + (g if grads else 0) + s * (state_bytes or (lambda w: 4))(w) + (
        (master_bytes or (lambda w: 4))(w) if use_master else 0)
    return (per if per_param else n * per) / divisor


def _truth_states(n, w, g, opt, master):
    return _states_model(n, w, g, opt, master)


STATE_MISTAKES = {
    "Adam counted as one state: Adam keeps two fp32 states per parameter (m and v), 8 bytes":
        lambda *a: _states_model(*a, states={**STATES, "adam": 1}),
    "gradients forgotten: every trainable parameter has a gradient of grad_bytes":
        lambda *a: _states_model(*a, grads=False),
    "master weights forgotten: master_weights=True adds a 4-byte fp32 copy of every weight":
        lambda *a: _states_model(*a, master_on=False),
    "master copy added although master_weights=False":
        lambda *a: _states_model(*a, master_on=True),
    "optimizer state counted in the weights' dtype: optimizer state is fp32 (4 bytes per element)":
        lambda *a: _states_model(*a, state_bytes=lambda w: w),
    "master copy counted in the weights' dtype: the master copy is fp32 (4 bytes)":
        lambda *a: _states_model(*a, master_bytes=lambda w: w),
    "momentum buffer forgotten: SGD with momentum keeps one fp32 state":
        lambda *a: _states_model(*a, states={**STATES, "sgd_momentum": 0}),
    "SGD with momentum counted as two states: it keeps one (the momentum buffer)":
        lambda *a: _states_model(*a, states={**STATES, "sgd_momentum": 2}),
    "plain SGD given a state: SGD without momentum keeps none":
        lambda *a: _states_model(*a, states={**STATES, "sgd": 1}),
    "bytes per parameter returned: multiply by num_params":
        lambda *a: _states_model(*a, per_param=True),
    "gigabytes returned: return bytes (no division by 1e9)":
        lambda *a: _states_model(*a, divisor=1e9),
    "GiB returned: return bytes (no division by 2**30)":
        lambda *a: _states_model(*a, divisor=2**30),
    # Right for each option alone, wrong for two together (the combination check finds these):
    "master copy added only for 16-bit weights: master_weights=True adds a 4-byte fp32 copy whatever "
    "weight_bytes is (fp32 weights with a master copy: 4 + 4)":
        lambda n, w, g, opt, master: _states_model(n, w, g, opt, master, master_on=master and w < 4),
    "the momentum buffer counted in the weights' dtype: optimizer state is fp32 (4 bytes per element) for "
    "SGD with momentum too, not only for Adam":
        lambda n, w, g, opt, master: _states_model(n, w, g, opt, master,
                                                   state_bytes=(lambda w_: w_) if opt == "sgd_momentum" else None),
}


def _close(value, expected) -> bool:
    try:
        return abs(float(value) - float(expected)) <= 0.5 + 1e-12 * abs(float(expected))
    except (TypeError, ValueError, OverflowError):
        return False


def _diagnose(outputs: list, probes: list, mistakes: dict, truth) -> str | None:
    """The mistake whose predictions equal the learner's outputs on every probe, if one does."""
    for name, model in mistakes.items():
        predicted = [model(*p) for p in probes]
        if all(_close(o, m) for o, m in zip(outputs, predicted)) and \
                any(not _close(m, truth(*p)) for m, p in zip(predicted, probes)):
            return name
    return None


def _call_states(impl, n, w, g, opt, master):
    return impl.training_memory_bytes(n, weight_bytes=w, grad_bytes=g, optimizer=opt, master_weights=master)


def _check_states(impl, probes, what: str, default_hint: str):
    """Pass/fail on `probes`; on failure, name the mistake from `probes` plus the disambiguating ones."""
    outputs = [_call_states(impl, *p) for p in probes]
    for p, out in zip(probes, outputs):
        if not _close(out, _truth_states(*p)):
            detail = _describe_states(p, out)
            extra = [_call_states(impl, *q) for q in _DISAMBIGUATE]
            mistake = _diagnose(outputs + extra, probes + _DISAMBIGUATE, STATE_MISTAKES, _truth_states)
            return failed(detail, mistake or default_hint)
    return passed(what)


def _describe_states(probe, out) -> str:
    """"training_memory_bytes(1,000, weight_bytes=4, ...) = 12,000; expected 16,000 (16 bytes/param)"."""
    n, w, g, opt, master = probe
    expected = int(_truth_states(*probe))
    return (f"training_memory_bytes({n:,}, weight_bytes={w}, grad_bytes={g}, optimizer={opt!r}, "
            f"master_weights={master}) = {_fmt(out)}; expected {expected:,} ({expected // n} bytes/param)")


def _fmt(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:,.6g}" if isinstance(value, float) else f"{value:,}"
    return repr(value)


# Extra probes for naming a mistake (not for pass/fail): grad_bytes != weight_bytes != 4 tells
# "Adam counted as one state" from "gradients forgotten", and so on.
_DISAMBIGUATE = [(1000, 4, 2, "adam", False), (1000, 2, 2, "sgd_momentum", True), (1000, 2, 2, "sgd", False)]


def _raises_value_error(fn, *args, words=(), **kwargs) -> str | None:
    """None if fn(...) raises ValueError mentioning one of `words`; else what happened."""
    try:
        result = fn(*args, **kwargs)
    except ValueError as exc:
        message = str(exc)
        if words and not any(w.lower() in message.lower() for w in words):
            return f"ValueError({message!r}) does not say what is wrong (mention {' or '.join(map(repr, words))})"
        return None
    except NotImplementedError:
        raise  # a stub: the harness reports it as not implemented yet
    except Exception as exc:  # noqa: BLE001 - reported
        return f"raised {type(exc).__name__}: {exc} instead of ValueError"
    return f"returned {_fmt(result)} instead of raising ValueError"


# ------------------------------------------------------------------------------- 0.2: LoRA --
def _lora_truth(shapes, r):
    return sum((o + i) * r for o, i in shapes)


LORA_MISTAKES = {
    "LoRA counted as d*k*r: a rank-r LoRA adds A (r x in) and B (out x r), (d + k) * r parameters":
        lambda shapes, r: sum(o * i * r for o, i in shapes),
    "the full matrix d*k counted: LoRA trains only A and B, (d + k) * r":
        lambda shapes, r: sum(o * i for o, i in shapes),
    "only A counted (r x in_features): B (out_features x r) trains too":
        lambda shapes, r: sum(r * i for o, i in shapes),
    "only B counted (out_features x r): A (r x in_features) trains too":
        lambda shapes, r: sum(o * r for o, i in shapes),
    "assumed a square layer (2 * out_features * r): A is r x in_features, B is out_features x r":
        lambda shapes, r: sum(2 * o * r for o, i in shapes),
    "assumed a square layer (2 * in_features * r): A is r x in_features, B is out_features x r":
        lambda shapes, r: sum(2 * i * r for o, i in shapes),
    "rank forgotten: (d + k) * r, not d + k":
        lambda shapes, r: sum(o + i for o, i in shapes),
    "only the first layer counted: sum over every layer in shapes":
        lambda shapes, r: (shapes[0][0] + shapes[0][1]) * r,
    "only the last layer counted: sum over every layer in shapes":
        lambda shapes, r: (shapes[-1][0] + shapes[-1][1]) * r,
    "A and B counted twice: (d + k) * r in total, once":
        lambda shapes, r: 2 * sum((o + i) * r for o, i in shapes),
}


def _check_lora(impl, probes, what, default_hint):
    outputs = [impl.lora_trainable_params(list(shapes), r) for shapes, r in probes]
    for (shapes, r), out in zip(probes, outputs):
        expected = _lora_truth(shapes, r)
        if not _close(out, expected):
            shown = shapes if len(shapes) <= 3 else f"{len(shapes)} layers like {shapes[0]}"
            mistake = _diagnose(outputs, probes, LORA_MISTAKES, _lora_truth)
            return failed(f"lora_trainable_params({shown}, rank={r}) = {_fmt(out)}; expected {expected:,}",
                          mistake or default_hint)
    return passed(what)



_LORA_MIXED = ([(64, 64), (172, 64), (64, 172)], 4)



# ------------------------------------------------------------------------ 0.3: activations --
def _korthikanti(s, b, h, a, layers, recompute="none"):
    if recompute == "none":
        per_layer = 34 * s * b * h + 5 * a * s * s * b
    elif recompute == "selective":
        per_layer = 34 * s * b * h
    else:
        per_layer = 2 * s * b * h
    return per_layer * layers


ACT_MISTAKES = {
    "n_layers forgotten: the formula is per layer, multiply by n_layers":
        lambda s, b, h, a, n, rc="none": _korthikanti(s, b, h, a, 1, rc),
    "the 5as/h term dropped: without recomputation the attention scores, softmax and dropout mask "
    "(5 a s^2 b bytes per layer) are kept":
        lambda s, b, h, a, n, rc="none": _korthikanti(s, b, h, a, n, "selective" if rc == "none" else rc),
    "heads forgotten in the attention term: it is 5 * a * s / h":
        lambda s, b, h, a, n, rc="none": _korthikanti(s, b, h, 1, n, rc),
    "s instead of s^2 in the attention term: sbh * 5as/h = 5 a s^2 b":
        lambda s, b, h, a, n, rc="none": (34 * s * b * h + 5 * a * s * b) * n if rc == "none" else _korthikanti(s, b, h, a, n, rc),
    "counted in fp32: the formula is already in bytes for 16-bit activations (do not multiply by 2 or 4)":
        lambda s, b, h, a, n, rc="none": 2 * _korthikanti(s, b, h, a, n, rc),
    "5as/h rounded down (integer division, a * s // h): wrong whenever h does not divide 5as; compute "
    "34sbh + 5as^2b and round once, at the end":
        lambda s, b, h, a, n, rc="none": (s * b * h * (34 + 5 * a * s // h)) * n if rc == "none"
        else _korthikanti(s, b, h, a, n, rc),
}


def _check_act(impl, probes, what, default_hint):
    outputs = [impl.activation_bytes(*p) for p in probes]
    for p, out in zip(probes, outputs):
        expected = _korthikanti(*p)
        if not _close(out, expected):
            s, b, h, a, n = p[:5]
            rc = p[5] if len(p) > 5 else "none"
            mistake = _diagnose(outputs, probes, ACT_MISTAKES, _korthikanti)
            return failed(f"activation_bytes(s={s}, b={b}, h={h}, a={a}, n_layers={n}, recompute={rc!r}) = "
                          f"{_fmt(out)}; expected {expected:,}", mistake or default_hint)
    return passed(what)



_ACT_SMALL = (100, 3, 96, 7, 2)  # 5as/h is not an integer here: compute in a way that keeps the exact total


# ------------------------------------------------------------ 0.4: the optimizer step's temporaries --
STEP_OPTIMIZERS = ("adam", "adamw", "sgd", "sgd_momentum")
IMPLEMENTATIONS = ("foreach", "for-loop", "fused")
STATE_DTYPES = {4: torch.float32, 2: torch.bfloat16}  # state_bytes -> the parameters' (and the state's) dtype
# Parameter lists, in the optimizer's order. The for-loop's worst moment is max over i of 2 n_i + n_(i-1):
# in (300, 1000, 10) it is at the largest tensor (2 x 1000 + 300), in (100, 96, 7) it is not (2 x 96 + 100).
NUMEL_LISTS = ((400,), (300, 1000, 10), (100, 96, 7))
# What torch.profiler sees in a step beyond the temporaries: Adam's step counters and scalars (12 bytes in fp32,
# 10 in bf16 on torch 2.13; tests/test_memory.py allows 16, as here).
STEP_SCALARS = 16

_measured: dict = {}


def _optimizer(optimizer: str, impl: str, params: list) -> torch.optim.Optimizer:
    kw = {"foreach": {"foreach": True}, "for-loop": {"foreach": False}, "fused": {"fused": True}}[impl]
    if optimizer in ("adam", "adamw"):
        return (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)(params, lr=1e-3, **kw)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9 if optimizer == "sgd_momentum" else 0.0, **kw)


def measured_step_temporaries(optimizer: str, impl: str, numels: tuple, state_bytes: int) -> int:
    """The CPU allocator's peak inside one step() of a real torch.optim optimizer (torch.profiler), above
    what was allocated before it: a later step, so the state already exists. Measured once per configuration
    and process (the grader's prepare() measures them all before the checks)."""
    key = (optimizer, impl, tuple(numels), state_bytes)
    if key not in _measured:
        generator = torch.Generator().manual_seed(0)
        dtype = STATE_DTYPES[state_bytes]
        params = [nn.Parameter(torch.randn(n, generator=generator).to(dtype)) for n in numels]
        for p in params:
            p.grad = torch.randn(p.numel(), generator=generator).to(dtype)
        step = _optimizer(optimizer, impl, params)
        step.step()  # creates the state
        _measured[key] = profiler_peak_bytes(step.step).peak_bytes
    return _measured[key]


def measure_every_step_configuration() -> None:
    for optimizer in STEP_OPTIMIZERS:
        for impl in IMPLEMENTATIONS:
            for numels in NUMEL_LISTS:
                for state_bytes in STATE_DTYPES:
                    measured_step_temporaries(optimizer, impl, numels, state_bytes)


def _step_model(optimizer, impl, numels, state_bytes, *, foreach=None, for_loop=None, fused=None, sgd=None,
                adamw=None, elem=None):
    """The rule (efftrain_lib/memory.py's optimizer_step_temporaries), with one piece replaceable to model a
    mistake: each keyword is the function of (numels) or value a mistake puts in that piece's place."""
    elem = state_bytes if elem is None else elem(impl, state_bytes)
    adam_like = optimizer in ("adam", "adamw")
    if optimizer == "adamw" and adamw is not None:
        adam_like = adamw
    if optimizer in ("sgd", "sgd_momentum") and sgd is not None:
        adam_like = sgd
    if not adam_like:
        return 0
    if impl == "fused":
        return (fused(optimizer, numels) if fused else 0) * elem
    if impl == "foreach":
        return (foreach or sum)(numels) * elem
    previous = (0, *numels[:-1])
    rule = for_loop or (lambda ns: max(2 * n + before for n, before in zip(ns, previous)))
    return rule(numels) * elem


def _step_truth(optimizer, impl, numels, state_bytes):
    return _step_model(optimizer, impl, numels, state_bytes)


def _largest_and_its_predecessor(numels):
    i = max(range(len(numels)), key=numels.__getitem__)
    return 2 * numels[i] + (numels[i - 1] if i else 0)


STEP_MISTAKES = {
    "foreach counted for the largest parameter only: torch._foreach_sqrt makes sqrt(v) of every parameter at "
    "once, so all of them are alive together (the sum of the numels)":
        lambda *a: _step_model(*a, foreach=max),
    "the for-loop counted like foreach (every parameter at once): the for-loop updates one parameter at a time":
        lambda *a: _step_model(*a, for_loop=sum),
    "the for-loop counted as one temporary of the largest parameter: sqrt(v) and its division by the bias "
    "correction are alive together":
        lambda *a: _step_model(*a, for_loop=max),
    "the for-loop counted as two temporaries of the largest parameter: the previous parameter's result "
    "(denom, a local not yet reassigned) is still alive, so the worst moment is max over i of 2 n_i + n_(i-1)":
        lambda *a: _step_model(*a, for_loop=lambda ns: 2 * max(ns)),
    "the for-loop's leftover taken at the largest parameter only: the worst moment is max over every i of "
    "2 n_i + n_(i-1), which need not be at the largest tensor":
        lambda *a: _step_model(*a, for_loop=_largest_and_its_predecessor),
    "the for-loop's leftover taken from the next parameter: it is the previous one's (n_(i-1)), in the "
    "optimizer's order":
        lambda *a: _step_model(*a, for_loop=lambda ns: max(2 * n + after for n, after in zip(ns, (*ns[1:], 0)))),
    "fused counted like foreach: fused=True updates each parameter in one kernel, in place, with no temporaries":
        lambda *a: _step_model(*a, fused=lambda opt, ns: sum(ns)),
    "SGD given Adam's temporaries: SGD (with or without momentum) updates in place":
        lambda *a: _step_model(*a, sgd=True),
    "AdamW counted without temporaries: AdamW's update is Adam's (its weight decay is in place)":
        lambda *a: _step_model(*a, adamw=False),
    "state_bytes ignored (4 bytes assumed): the temporaries have the optimizer state's dtype":
        lambda *a: _step_model(*a, elem=lambda impl, sb: 4),
    # Right for each option alone, wrong for two together (the combination check finds these):
    "state_bytes ignored by the for-loop (4 bytes assumed there): every implementation's temporaries have the "
    "state's dtype":
        lambda *a: _step_model(*a, elem=lambda impl, sb: 4 if impl == "for-loop" else sb),
    "fused honoured for Adam only: AdamW(fused=True) has no temporaries either":
        lambda *a: _step_model(*a, fused=lambda opt, ns: sum(ns) if opt == "adamw" else 0),
}


def step_configurations():
    """Every (optimizer, impl, numels, state_bytes) the grader knows a measurement for."""
    return [(o, i, n, b) for o in STEP_OPTIMIZERS for i in IMPLEMENTATIONS for n in NUMEL_LISTS for b in STATE_DTYPES]


def call_step(impl, optimizer, implementation, numels, state_bytes):
    """The learner's answer, or the exception it raised (a mistake model never matches an exception)."""
    try:
        return impl.optimizer_step_temporaries(optimizer, implementation, list(numels), state_bytes)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported by the check
        return exc


def step_within(value, measured: int) -> bool:
    """The learner's bytes against the profiler's: at most STEP_SCALARS below what it measured, never above."""
    return (isinstance(value, int) and not isinstance(value, bool)) and measured - STEP_SCALARS <= value <= measured


def name_step_mistake(impl) -> str | None:
    """The classic mistake whose rule gives the learner's answers on every configuration, if one does."""
    configs = step_configurations()
    answers = [call_step(impl, *c) for c in configs]
    for name, model in STEP_MISTAKES.items():
        predicted = [model(*c) for c in configs]
        if predicted != [_step_truth(*c) for c in configs] and all(
                not isinstance(a, Exception) and _close(a, p) for a, p in zip(answers, predicted)):
            return name
    return None


def describe_step(optimizer, implementation, numels, state_bytes) -> str:
    return f"optimizer_step_temporaries({optimizer!r}, {implementation!r}, {list(numels)}, {state_bytes})"

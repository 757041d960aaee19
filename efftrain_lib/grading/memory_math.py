"""Graders for Chapter 0 (memory anatomy): exercises 0.1-0.3 in <impl>/memory_math.py.

Numeric answers, checked exactly (the results are integers of bytes or parameters; a float within
0.5 of the answer is accepted, an int is then required by its own check). Every failing check runs a
few probes through the learner's function and compares them with a catalog of classic mistakes
(Adam counted as one state, master weights forgotten, LoRA counted as d*k*r, ...): when the outputs
match one of them on every probe, the hint names it.

References: training memory = params x (weight + grad + 4 x optimizer states + 4 if master copy)
(REFERENCE.md, "Memory anatomy": 16 bytes/param for fp32 Adam, EleutherAI's 16 for mixed precision
with a master copy); LoRA: (out + in) x r per layer (Hu et al. 2021); activations per layer
sbh(34 + 5as/h), 34sbh selective, 2sbh full (Korthikanti et al. 2022).
"""

from __future__ import annotations

import math

from efftrain_lib.grading import Checks, failed, passed

EXERCISES = {
    "0.1": "training_memory_bytes",
    "0.2": "lora_trainable_params",
    "0.3": "activation_bytes (Korthikanti)",
}
CHECKS = Checks()

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
        expected = _truth_states(*p)
        if not _close(out, expected):
            n, w, g, opt, master = p
            detail = (f"training_memory_bytes({n:,}, weight_bytes={w}, grad_bytes={g}, optimizer={opt!r}, "
                      f"master_weights={master}) = {_fmt(out)}; expected {int(expected):,} "
                      f"({int(expected) // n} bytes/param)")
            extra = [_call_states(impl, *q) for q in _DISAMBIGUATE]
            mistake = _diagnose(outputs + extra, probes + _DISAMBIGUATE, STATE_MISTAKES, _truth_states)
            return failed(detail, mistake or default_hint)
    return passed(what)


def _fmt(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:,.6g}" if isinstance(value, float) else f"{value:,}"
    return repr(value)


# Extra probes for naming a mistake (not for pass/fail): grad_bytes != weight_bytes != 4 tells
# "Adam counted as one state" from "gradients forgotten", and so on.
_DISAMBIGUATE = [(1000, 4, 2, "adam", False), (1000, 2, 2, "sgd_momentum", True), (1000, 2, 2, "sgd", False)]


@CHECKS.add("0.1", "fp32 Adam: 16 bytes per parameter (7B -> 112 GB)",
            hint="weights 4 + gradients 4 + Adam m and v 2 x 4 = 16 bytes per parameter")
def fp32_adam_is_16_bytes_per_parameter(impl):
    return _check_states(impl, [(7_000_000_000, 4, 4, "adam", False)],
                         "7B fp32 Adam = 112,000,000,000 bytes (16 bytes/param)",
                         "fp32 Adam: weights 4 + gradients 4 + m and v 2 x 4 = 16 bytes per parameter")


@CHECKS.add("0.1", "mixed precision Adam with master weights: 16 bytes per parameter",
            hint="2 (fp16 weights) + 2 (fp16 grads) + 4 (fp32 master copy) + 8 (fp32 m, v) = 16")
def mixed_precision_adam_with_master_weights_is_16_bytes(impl):
    return _check_states(impl, [(1_000_000, 2, 2, "adam", True), (1000, 2, 4, "adam", True)],
                         "fp16 weights and grads + fp32 master, m, v = 16 bytes/param (EleutherAI's figure)",
                         "2 + 2 + 4 (master) + 8 (m, v) = 16 bytes per parameter")


@CHECKS.add("0.1", "optimizer state is fp32 even for 16-bit weights",
            hint="m and v are fp32 (4 bytes each) whatever weight_bytes is: 2 + 2 + 8 = 12 without master")
def optimizer_state_is_fp32_for_16_bit_weights(impl):
    return _check_states(impl, [(1_000_000, 2, 2, "adam", False), (1000, 2, 4, "adam", False)],
                         "bf16 weights and grads, fp32 m and v: 12 bytes/param",
                         "m and v are fp32 (4 bytes each) whatever weight_bytes is")


@CHECKS.add("0.1", "SGD with momentum keeps one state, plain SGD none",
            hint="sgd_momentum: one fp32 state (4 bytes); sgd: none")
def sgd_momentum_keeps_one_state_plain_sgd_none(impl):
    return _check_states(impl, [(1_000_000, 4, 4, "sgd_momentum", False), (1_000_000, 4, 4, "sgd", False),
                                (1000, 2, 2, "sgd", True)],
                         "SGD+momentum 12 bytes/param, SGD 8, SGD with an fp32 master 8 (2 + 2 + 4)",
                         "sgd_momentum: one fp32 state (4 bytes); sgd: none")


@CHECKS.add("0.1", "returns an int of bytes", hint="return int(num_params * bytes_per_param)")
def training_memory_returns_int_bytes(impl):
    out = _call_states(impl, 70_000_000_001, 4, 4, "adam", False)
    if isinstance(out, bool) or not isinstance(out, int):
        return failed(f"returned {type(out).__name__} {_fmt(out)}", "return an int of bytes: int(...)")
    return passed(f"{out:,} (int)")


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


@CHECKS.add("0.1", "bad input raises a clear ValueError",
            hint="raise ValueError for num_params/weight_bytes/grad_bytes <= 0 and for an unknown optimizer")
def training_memory_bad_input_raises_value_error(impl):
    f = impl.training_memory_bytes
    cases = [
        ("num_params=0", lambda: f(0, weight_bytes=4, grad_bytes=4, optimizer="adam"), ("num_params", "0")),
        ("num_params=-7", lambda: f(-7, weight_bytes=4, grad_bytes=4, optimizer="adam"), ("num_params", "-7")),
        ("weight_bytes=0", lambda: f(10, weight_bytes=0, grad_bytes=4, optimizer="adam"), ("weight_bytes", "0")),
        ("grad_bytes=-2", lambda: f(10, weight_bytes=4, grad_bytes=-2, optimizer="adam"), ("grad_bytes", "-2")),
        ("optimizer='adagrad'", lambda: f(10, weight_bytes=4, grad_bytes=4, optimizer="adagrad"), ("adagrad",)),
    ]
    for label, call, words in cases:
        problem = _raises_value_error(call, words=words)
        if problem:
            hint = ("an unknown optimizer name must raise ValueError naming it, not be treated as plain SGD"
                    if "adagrad" in label else "non-positive sizes must raise ValueError naming the argument")
            return failed(f"{label}: {problem}", hint)
    return passed("ValueError for non-positive sizes and an unknown optimizer name")


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


@CHECKS.add("0.2", "one square layer: (d + k) * r", hint="A: r x in_features, B: out_features x r")
def lora_params_of_one_square_layer(impl):
    return _check_lora(impl, [([(4096, 4096)], 8), _LORA_MIXED, ([(48, 20), (20, 48)], 3)],
                       "4096 x 4096 at r=8: 65,536 (0.39% of 16,777,216)",
                       "a rank-r LoRA on an out x in layer adds r * in + out * r parameters")


@CHECKS.add("0.2", "non-square layers: A is r x in, B is out x r",
            hint="(out_features + in_features) * rank per layer")
def lora_params_of_non_square_layers(impl):
    return _check_lora(impl, [([(11008, 4096)], 16), ([(20, 48)], 3), _LORA_MIXED],
                       "11008 x 4096 at r=16: 241,664",
                       "(out_features + in_features) * rank per layer, whatever the shape")


@CHECKS.add("0.2", "sums over layers (LLaMA-7B q, v at r=8: 4,194,304)",
            hint="add up (out + in) * rank over every layer in shapes")
def lora_params_summed_over_layers(impl):
    return _check_lora(impl, [([(4096, 4096)] * 64, 8), _LORA_MIXED, ([(8, 30), (30, 8), (16, 16)], 2)],
                       "64 x (4096 + 4096) x 8 = 4,194,304",
                       "add up (out + in) * rank over every layer in shapes")


@CHECKS.add("0.2", "returns an int", hint="parameter counts are integers")
def lora_params_returns_int(impl):
    out = impl.lora_trainable_params([(4096, 11008)], 8)
    if isinstance(out, bool) or not isinstance(out, int):
        return failed(f"returned {type(out).__name__} {_fmt(out)}", "return an int: parameters are counted, not measured")
    return passed(f"{out:,} (int)")


@CHECKS.add("0.2", "rank larger than a layer, or non-positive sizes, raise ValueError",
            hint="rank must be in [1, min(out_features, in_features)] for every layer")
def lora_params_bad_rank_or_sizes_raise_value_error(impl):
    f = impl.lora_trainable_params
    try:
        at_limit = f([(8, 4)], 4)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported
        return failed(f"rank 4 on an 8 x 4 layer raised {type(exc).__name__}: {exc}",
                      "rank == min(out_features, in_features) is allowed (the update can be full rank): "
                      "reject only rank > min(out, in)")
    del at_limit  # its value is the other checks' business
    cases = [
        ("rank 5 on an 8 x 4 layer", lambda: f([(8, 4)], 5), ("rank", "5")),
        ("rank 9 on the second layer of [(64, 64), (64, 8)]", lambda: f([(64, 64), (64, 8)], 9), ("rank", "9")),
        ("rank 0", lambda: f([(8, 4)], 0), ("rank", "0")),
        ("rank -2", lambda: f([(8, 4)], -2), ("rank", "-2")),
        ("a 0 x 4 layer", lambda: f([(0, 4)], 1), ("0",)),
    ]
    for label, call, words in cases:
        problem = _raises_value_error(call, words=words)
        if problem:
            hint = ("a rank larger than a layer allows must raise ValueError: the update B @ A has rank "
                    "<= min(out, in), so a larger rank is a mistake"
                    if "on" in label else "non-positive ranks and layer sizes must raise ValueError")
            return failed(f"{label}: {problem}", hint)
    return passed("ValueError for rank > min(out, in) on any layer, rank <= 0 and empty layers")


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


@CHECKS.add("0.3", "no recomputation: sbh(34 + 5as/h) per layer (7B, s=2048: 30.6 GB)",
            hint="per layer s*b*h*(34 + 5*a*s/h), times n_layers")
def activations_without_recomputation(impl):
    return _check_act(impl, [(2048, 1, 4096, 32, 32), _ACT_SMALL, (64, 2, 64, 4, 3)],
                      "30,601,641,984 bytes for s=2048, b=1, h=4096, a=32, 32 layers",
                      "per layer s*b*h*(34 + 5*a*s/h), times n_layers")


@CHECKS.add("0.3", "selective and full recomputation: 34sbh and 2sbh",
            hint="selective keeps 34*s*b*h per layer, full keeps 2*s*b*h (each layer's 16-bit input)")
def activations_with_selective_and_full_recomputation(impl):
    probes = [(2048, 1, 4096, 32, 32, "selective"), (2048, 1, 4096, 32, 32, "full"),
              _ACT_SMALL + ("selective",), _ACT_SMALL + ("full",), _ACT_SMALL]
    return _check_act(impl, probes, "9,126,805,504 (selective) and 536,870,912 (full) bytes for the 7B",
                      "selective keeps 34*s*b*h per layer, full keeps 2*s*b*h")


@CHECKS.add("0.3", "returns an int; bad input raises ValueError",
            hint="int(...) the result; raise ValueError for sizes <= 0 and unknown recompute names")
def activations_returns_int_and_rejects_bad_input(impl):
    out = impl.activation_bytes(*_ACT_SMALL)
    if isinstance(out, bool) or not isinstance(out, int):
        return failed(f"returned {type(out).__name__} {_fmt(out)}", "return an int of bytes: int(...)")
    f = impl.activation_bytes
    cases = [
        ("recompute='partial'", lambda: f(2048, 1, 4096, 32, 32, "partial"), ("partial",)),
        ("seq_len=0", lambda: f(0, 1, 4096, 32, 32), ("seq_len", "0")),
        ("n_heads=-1", lambda: f(2048, 1, 4096, -1, 32), ("n_heads", "-1")),
        ("n_layers=0", lambda: f(2048, 1, 4096, 32, 0), ("n_layers", "0")),
    ]
    for label, call, words in cases:
        problem = _raises_value_error(call, words=words)
        if problem:
            return failed(f"{label}: {problem}", "raise ValueError naming the bad argument: sizes must be "
                                                 "positive, recompute one of 'none', 'selective', 'full'")
    return passed(f"{out:,} (int); ValueError for bad sizes and names")

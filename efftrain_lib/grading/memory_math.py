"""Graders for Chapter 0 (memory anatomy): exercises 0.1-0.4 in <impl>/memory_math.py.

Numeric answers, checked exactly (the results are integers of bytes or parameters; a float within
0.5 of the answer is accepted, an int is then required by its own check). Every failing check runs a
few probes through the learner's function and compares them with a catalog of classic mistakes
(Adam counted as one state, master weights forgotten, LoRA counted as d*k*r, ...): when the outputs
match one of them on every probe, the hint names it. Each exercise also has a check of its options
together (every combination: code that handles an option alone but drops it in company fails it, and
the message names the combination; efftrain_lib/grading/combinations.py).

References: training memory = params x (weight + grad + 4 x optimizer states + 4 if master copy)
(REFERENCE.md, "Memory anatomy": 16 bytes/param for fp32 Adam, EleutherAI's 16 for mixed precision
with a master copy); LoRA: (out + in) x r per layer (Hu et al. 2021); activations per layer
sbh(34 + 5as/h), 34sbh selective, 2sbh full (Korthikanti et al. 2022). Exercise 0.4 has no formula to
compare with: its reference is torch.profiler's measurement of a real torch.optim step on this machine
(the answer may be up to 16 bytes below it: the step counters), measured once in prepare().
"""

from __future__ import annotations

from efftrain_lib.grading import Checks, failed, passed
from efftrain_lib.grading.combinations import TOGETHER_HINT, product, where_wrong
from efftrain_lib.grading.memory_math_support import (
    _ACT_SMALL, _LORA_MIXED, ACT_MISTAKES, NUMEL_LISTS, STATE_MISTAKES, STATES, STEP_SCALARS,
    _call_states, _check_act, _check_lora, _check_states, _close, _describe_states, _diagnose, _fmt,
    _korthikanti, _lora_truth, _raises_value_error, _truth_states, call_step, describe_step,
    measure_every_step_configuration, measured_step_temporaries, name_step_mistake, step_configurations,
    step_within,
)

EXERCISES = {
    "0.1": "training_memory_bytes",
    "0.2": "lora_trainable_params",
    "0.3": "activation_bytes (Korthikanti)",
    "0.4": "optimizer_step_temporaries (measured by torch.profiler)",
}
CHECKS = Checks()


def prepare() -> None:
    """Measure every optimizer step the 0.4 checks compare with (torch.profiler: about 3 s the first time in
    a process, for its own start), once, before the timed checks."""
    measure_every_step_configuration()


# ------------------------------------------------------------------------ 0.1: model states --

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


@CHECKS.add("0.1", "every optimizer, with and without a master copy, with fp32 and 16-bit weights and gradients",
            hint="weights + gradients + 4 bytes per fp32 optimizer state + 4 for a master copy, in every combination")
def training_memory_options_together(impl):
    combos = product({"optimizer": list(STATES), "master_weights": [False, True], "weight_bytes": [4, 2],
                      "grad_bytes": [4, 2]})
    probes = [(1000, c["weight_bytes"], c["grad_bytes"], c["optimizer"], c["master_weights"]) for c in combos]
    outputs = [_call_states(impl, *p) for p in probes]
    wrong = [i for i, (p, out) in enumerate(zip(probes, outputs)) if not _close(out, _truth_states(*p))]
    if not wrong:
        return passed(f"all {len(combos)} combinations of optimizer, master_weights, weight_bytes and grad_bytes")
    where = where_wrong([combos[i] for i in wrong], [c for i, c in enumerate(combos) if i not in wrong])
    mistake = _diagnose(outputs, probes, STATE_MISTAKES, _truth_states)
    return failed(f"{_describe_states(probes[wrong[0]], outputs[wrong[0]])}; {where}",
                  mistake or TOGETHER_HINT)


# ------------------------------------------------------------------------------- 0.2: LoRA --

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


_LAYER_KINDS = {"square": (8, 8), "tall (out > in)": (12, 4), "wide (in > out)": (4, 12)}


@CHECKS.add("0.2", "ranks up to and past the limit on square, tall and wide layers, alone and among others",
            hint="rank may be anything from 1 to min(out_features, in_features) of every layer; one more is a "
                 "ValueError")
def lora_params_ranks_and_layer_shapes_together(impl):
    combos = product({"layer": list(_LAYER_KINDS), "rank": ["1", "the limit", "the limit + 1"],
                      "position": ["alone", "after a 64 x 64 layer"]})
    wrong, problems = [], []
    for combo in combos:
        shape = _LAYER_KINDS[combo["layer"]]
        rank = {"1": 1, "the limit": min(shape), "the limit + 1": min(shape) + 1}[combo["rank"]]
        shapes = [shape] if combo["position"] == "alone" else [(64, 64), shape]
        call = f"lora_trainable_params({shapes}, rank={rank})"
        if combo["rank"] == "the limit + 1":
            problem = _raises_value_error(impl.lora_trainable_params, shapes, rank, words=("rank",))
            problem = problem and f"{call}: {problem}"
        else:
            try:
                out = impl.lora_trainable_params(shapes, rank)
            except ValueError as exc:
                out = f"ValueError({exc})"
            problem = None if _close(out, _lora_truth(shapes, rank)) else \
                f"{call} = {out if isinstance(out, str) else _fmt(out)}; expected {_lora_truth(shapes, rank):,}"
        if problem:
            wrong.append(combo)
            problems.append(problem)
    if not wrong:
        return passed(f"all {len(combos)} combinations: counted up to min(out, in), ValueError one past it")
    passing = [c for c in combos if c not in wrong]
    where = where_wrong(wrong, passing)
    hint = "rank may be anything from 1 to min(out_features, in_features) of every layer; one more is a ValueError"
    if all(c["rank"] == "the limit + 1" for c in wrong):
        kinds = {c["layer"] for c in wrong}
        if kinds == {"wide (in > out)"}:
            hint = ("rank bound checked against in_features only: a wide layer (in > out) allows at most "
                    "out_features; check rank > min(out_features, in_features)")
        elif kinds == {"tall (out > in)"}:
            hint = ("rank bound checked against out_features only: a tall layer (out > in) allows at most "
                    "in_features; check rank > min(out_features, in_features)")
    return failed(f"{problems[0]}; {where}", hint)


# ------------------------------------------------------------------------ 0.3: activations --

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


@CHECKS.add("0.3", "every recompute with one or many layers, batch 1 or more, and 5as/h whole or not",
            hint="per layer s*b*h*(34 + 5*a*s/h), 34*s*b*h or 2*s*b*h, times n_layers, rounded once at the end")
def activations_options_together(impl):
    s, h = 96, 64  # 5as/h = 30 with 4 heads, 52.5 with 7
    combos = product({"recompute": ["none", "selective", "full"], "batch_size": [1, 3], "n_layers": [1, 4],
                      "n_heads": [4, 7]})
    probes = [(s, c["batch_size"], h, c["n_heads"], c["n_layers"], c["recompute"]) for c in combos]
    outputs = [impl.activation_bytes(*p) for p in probes]
    wrong = [i for i, (p, out) in enumerate(zip(probes, outputs)) if not _close(out, _korthikanti(*p))]
    if not wrong:
        return passed(f"all {len(combos)} combinations of recompute, batch_size, n_layers and n_heads")
    s_, b, h_, a, n, rc = probes[wrong[0]]
    where = where_wrong([combos[i] for i in wrong], [c for i, c in enumerate(combos) if i not in wrong])
    mistake = _diagnose(outputs, probes, ACT_MISTAKES, _korthikanti)
    return failed(f"activation_bytes(s={s_}, b={b}, h={h_}, a={a}, n_layers={n}, recompute={rc!r}) = "
                  f"{_fmt(outputs[wrong[0]])}; expected {_korthikanti(*probes[wrong[0]]):,}; {where}",
                  mistake or TOGETHER_HINT)


# ------------------------------------------------------ 0.4: the optimizer step's temporaries --
def _check_step(impl, configs, what: str, default_hint: str, *, together: bool = False):
    """Pass when every answer is within STEP_SCALARS below torch.profiler's measurement; else report the
    first miss, what the misses share (when `together`) and the classic mistake the answers follow."""
    answers = [call_step(impl, *c) for c in configs]
    misses = [i for i, (c, a) in enumerate(zip(configs, answers)) if not step_within(a, measured_step_temporaries(*c))]
    if not misses:
        return passed(what)
    first, answer = configs[misses[0]], answers[misses[0]]
    shown = f"raised {type(answer).__name__}: {answer}" if isinstance(answer, Exception) else f"= {_fmt(answer)}"
    detail = (f"{describe_step(*first)} {shown}; torch.profiler measured {measured_step_temporaries(*first):,} "
              f"bytes in that step (the answer may be up to {STEP_SCALARS} below: the step counters)")
    if together:
        combos = [dict(optimizer=o, impl=i, numels=list(n), state_bytes=b) for o, i, n, b in configs]
        detail += "; " + where_wrong([combos[i] for i in misses], [c for i, c in enumerate(combos) if i not in misses])
    return failed(detail, name_step_mistake(impl) or default_hint)


@CHECKS.add("0.4", "Adam and AdamW, foreach: what torch.profiler measures",
            hint="foreach computes sqrt(v) for every parameter at once: all those temporaries are alive together")
def step_temporaries_of_adam_foreach(impl):
    configs = [("adam", "foreach", n, 4) for n in NUMEL_LISTS] + [("adamw", "foreach", NUMEL_LISTS[1], 4)]
    return _check_step(impl, configs, "Adam(foreach=True) and AdamW: equal to the profiler's peak",
                       "foreach computes sqrt(v) for every parameter at once: all those temporaries are alive "
                       "together")


@CHECKS.add("0.4", "Adam, for-loop: what torch.profiler measures",
            hint="the for-loop updates one parameter at a time: find which temporaries are alive together, and "
                 "whether anything of the previous parameter still is")
def step_temporaries_of_adam_for_loop(impl):
    configs = [("adam", "for-loop", n, 4) for n in NUMEL_LISTS]
    return _check_step(impl, configs, "Adam(foreach=False): equal to the profiler's peak on 3 parameter lists",
                       "the for-loop updates one parameter at a time: find which temporaries are alive together, "
                       "and whether anything of the previous parameter still is (measure with profiler_peak_bytes)")


@CHECKS.add("0.4", "fused Adam and SGD: what torch.profiler measures",
            hint="fused=True and SGD (with or without momentum) update in place: nothing beyond the state")
def step_temporaries_of_fused_adam_and_sgd(impl):
    numels = NUMEL_LISTS[1]
    configs = [("adam", "fused", numels, 4)] + [(o, i, numels, 4) for o in ("sgd", "sgd_momentum")
                                                for i in ("foreach", "for-loop", "fused")]
    return _check_step(impl, configs, "fused Adam, SGD and SGD with momentum: no temporaries, as measured",
                       "fused=True and SGD (with or without momentum) update in place: nothing beyond the state")


@CHECKS.add("0.4", "every optimizer, implementation, state dtype and parameter list together (torch.profiler)",
            hint="each implementation's rule holds for every optimizer, and its temporaries have the state's dtype")
def step_temporaries_options_together(impl):
    configs = step_configurations()
    return _check_step(impl, configs, f"all {len(configs)} combinations equal to the profiler's peak",
                       TOGETHER_HINT,
                       together=True)


@CHECKS.add("0.4", "returns an int; unknown names and non-positive sizes raise ValueError",
            hint="int(...) the result; raise ValueError naming an unknown optimizer or impl, and a state_bytes "
                 "or element count <= 0")
def step_temporaries_returns_int_and_rejects_bad_input(impl):
    out = impl.optimizer_step_temporaries("adam", "foreach", [300, 1000, 10], 4)
    if isinstance(out, bool) or not isinstance(out, int):
        return failed(f"returned {type(out).__name__} {_fmt(out)}", "return an int of bytes: int(...)")
    f = impl.optimizer_step_temporaries
    cases = [
        ("optimizer='adagrad'", lambda: f("adagrad", "foreach", [10], 4), ("adagrad",)),
        ("impl='fast'", lambda: f("adam", "fast", [10], 4), ("fast",)),
        ("state_bytes=0", lambda: f("adam", "foreach", [10], 0), ("state_bytes",)),
        ("numels [10, 0]", lambda: f("adam", "for-loop", [10, 0], 4), ("0",)),
    ]
    for label, call, words in cases:
        problem = _raises_value_error(call, words=words)
        if problem:
            hint = ("an unknown implementation must raise ValueError naming it, not be taken for foreach"
                    if "fast" in label else "raise ValueError naming the bad argument: optimizer one of adam, "
                    "adamw, sgd, sgd_momentum; impl one of foreach, for-loop, fused; positive sizes")
            return failed(f"{label}: {problem}", hint)
    return passed(f"{out:,} (int); ValueError for unknown names and non-positive sizes")

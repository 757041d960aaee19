"""Graders for Chapter 3 (mixed precision): exercises 3.1-3.7 in <impl>/loss_scaling.py.

Behaviour only, through the exercise API (LossScaler(init_scale, growth_factor, backoff_factor,
growth_interval) with scale / get_scale / unscale_ / step / update / state_dict / load_state_dict,
train_step, stochastic_round_to_bf16), so any correct implementation passes. The reference is
torch.amp.GradScaler("cpu") (torch 2.13), driven through the same scripted runs; for train_step, also the
library's one training step (efftrain_lib/training.py training_step) under the same options. Exercise 3.7's
checks live in efftrain_lib/grading/loss_scaling_rounding.py (registered at the end of this module).

Options together: the scaler runs with two optimizers, param groups and parameters without a gradient in
every pairwise combination (against GradScaler); every pair of (growth_factor, backoff_factor,
growth_interval); train_step under every pair of (autocast dtype fp32 / bf16 / fp16-with-a-scaler, no
scaler / GradScaler / LossScaler, clipping, scheduler, an overflowing batch). A failure names the
combination.

Tolerances: none where the arithmetic is the same. Scales are powers of two here (init 2**10, factors 2
to 8 and 1/2 to 1/8), so every scale, every unscaled gradient and every parameter after the run must be
*equal* (torch.equal) to GradScaler's; losses are compared as Python floats (equal). The approximate
figures: a clipped gradient norm within 1e-5 relative; train_step against the library's step: losses
within 1e-6 relative, parameters within 1e-6 + 1e-5 x max |parameter|.

When a scale trajectory differs from GradScaler's, the check re-simulates the classic wrong update rules
(`_RULES`) on the same script and names the one the learner's trajectory matches."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grading import Checks, failed, passed
from efftrain_lib.grading.loss_scaling_rounding import (
    bf16_weights_keep_small_updates, non_float32_input_is_a_type_error, reproducible_under_manual_seed,
    rounding_is_unbiased, rounds_to_a_bracketing_bf16_value,
)
from efftrain_lib.grading.loss_scaling_support import (  # noqa: F401  (tests reach _RULES, _simulate, _diagnose)
    _backward, _BAD_ARGUMENTS, _data, _diagnose, _diagnose_run, _drive, _factor_diagnosis, _factor_rule, _fmt, _fp32,
    _full_run, _library_scaler, _library_train_step, _loaded_without_tracker, _mlp, _mse, _optimizer_case_problem,
    _param_and_opt, _ref, _reference_step, _RULES, _scaler, _simulate, _step_problem, _step_run, _trajectory_check,
    _two_optimizer_run, FACTOR_CASES, FACTOR_PATTERN, INF, INIT, INJECT, NAN, OPTIMIZER_CASES, STEP_CASES,
)

EXERCISES = {
    "3.1": "LossScaler: constructor, scale, get_scale",
    "3.2": "unscale_",
    "3.3": "step",
    "3.4": "update: dynamic scaling",
    "3.5": "state_dict and load_state_dict",
    "3.6": "train_step: every option together",
    "3.7": "stochastic rounding to bf16",
}
CHECKS = Checks()


@CHECKS.add("3.1", "scale(loss) multiplies by init_scale; get_scale() returns it",
            hint="self._scale = float(init_scale); scale(loss) returns loss * scale; get_scale() returns it")
def scale_multiplies_by_init_scale(impl):
    scaler = _scaler(impl)
    value = float(scaler.get_scale())
    if value != INIT:
        return failed(f"get_scale() = {value:g} after LossScaler(init_scale={INIT:g})",
                      "get_scale() must return the init_scale you were given (init_scale ignored?)")
    default = float(impl.LossScaler().get_scale())
    if default != 2.0**16:
        return failed(f"LossScaler().get_scale() = {default:g}; GradScaler's default init_scale is 65536 (2**16)",
                      "the default init_scale is 2.0**16")
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    scaled = scaler.scale((x * x).sum())
    if not isinstance(scaled, torch.Tensor):
        return failed(f"scale(loss) returned {type(scaled).__name__}", "scale(loss) must return a tensor")
    scaled.backward()
    want = 2 * x.detach() * INIT
    if not torch.equal(x.grad, want):
        return failed(f"after scale(loss).backward() the gradient is {x.grad.tolist()}; expected "
                      f"{want.tolist()} (the true gradient x {INIT:g})",
                      "scale(loss) must multiply the loss by the scale, so every gradient is multiplied too")
    big = impl.LossScaler().scale(torch.tensor(4.0, dtype=torch.float16))
    if not torch.isfinite(big).all():
        return failed("scale() of an fp16 loss 4.0 at the default scale 65536 gave inf (fp16 tops out at 65504)",
                      "multiply by an fp32 tensor, torch.tensor(scale, dtype=torch.float32), not a Python float: "
                      "an fp16 loss times a Python float stays fp16 and overflows")
    return passed(f"get_scale() {value:g}, gradients x {INIT:g} exactly, fp16 loss scaled into fp32 like GradScaler")


@CHECKS.add("3.1", "bad arguments raise ValueError",
            hint="validate in __init__: growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1, "
                 "a finite init_scale > 0")
def bad_arguments_raise_value_error(impl):
    for kwargs, what in _BAD_ARGUMENTS:
        try:
            impl.LossScaler(**kwargs)
        except ValueError:
            continue
        except NotImplementedError:
            raise  # a stub: reported as "not implemented yet"
        except Exception as exc:  # noqa: BLE001 - reported
            return failed(f"LossScaler({what.split(' ')[0]}) raised {type(exc).__name__}: {exc}",
                          "raise ValueError (bad argument value), with a message that says which argument")
        return failed(f"LossScaler({what.split(' ')[0]}) was accepted: {what}",
                      "no argument validation: raise ValueError for growth_factor <= 1, backoff_factor outside "
                      "(0, 1), growth_interval < 1 and a non-finite init_scale")
    return passed(f"{len(_BAD_ARGUMENTS)} bad settings refused with ValueError")


# --------------------------------------------------------------------- Exercise 3.2: unscale_ --
@CHECKS.add("3.2", "unscale_ divides the gradients by the scale (equal to GradScaler)",
            hint="multiply every gradient by 1/scale in place: torch._foreach_mul_(grads, 1.0 / scale)")
def unscale_divides_gradients_like_grad_scaler(impl):
    ours, ref = _scaler(impl), _ref(init_scale=INIT)
    results = []
    for scaler in (ours, ref):
        model = _mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = _data()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        scaler.unscale_(optimizer)
        results.append([p.grad.clone() for p in model.parameters()])
    got, want = results
    if all(torch.equal(a, b) for a, b in zip(got, want)):
        return passed("every gradient equal to GradScaler.unscale_'s (torch.equal)")
    ratio = (got[0].abs().sum() / want[0].abs().sum()).item()
    if math.isclose(ratio, INIT * INIT, rel_tol=1e-3):
        hint = "unscale_ multiplied the gradients by the scale instead of dividing: multiply by 1/scale"
    elif math.isclose(ratio, INIT, rel_tol=1e-3):
        hint = "the gradients were not unscaled: unscale_ must divide them by the scale in place (p.grad, not a copy)"
    elif math.isclose(ratio, 1 / INIT, rel_tol=1e-3):
        hint = "the gradients were divided by the scale twice"
    else:
        hint = "unscale_ must multiply each gradient by 1/scale, in place"
    maxdiff = max((a - b).abs().max().item() for a, b in zip(got, want))
    return failed(f"max |diff| {maxdiff:.3g} vs GradScaler.unscale_; your gradients are {ratio:.3g} x its", hint)


@CHECKS.add("3.2", "unscale_ twice before update() raises RuntimeError",
            hint="remember which optimizers were unscaled since the last update() and raise RuntimeError on a "
                 "second unscale_")
def unscale_twice_raises_runtime_error(impl):
    scaler = _scaler(impl)
    param, optimizer = _param_and_opt()
    _backward(scaler, param)
    scaler.unscale_(optimizer)
    once = param.grad.clone()
    try:
        scaler.unscale_(optimizer)
    except RuntimeError as exc:
        if not torch.equal(param.grad, once):
            return failed("the second unscale_ raised, but only after dividing the gradients again",
                          "check for the repeated call before touching the gradients")
        return passed(f"RuntimeError: {exc}")
    twice = torch.equal(param.grad, once / INIT)
    return failed("a second unscale_ before update() did not raise"
                  + ("; it divided the gradients by the scale twice" if twice else ""),
                  "unscaling twice divides the gradients twice (silently tiny updates): raise RuntimeError on "
                  "a second unscale_ for the same optimizer before update()")


@CHECKS.add("3.2", "fp16 gradients are refused (fp32 master weights)",
            hint="raise ValueError when a gradient is torch.float16: the optimizer must hold fp32 master weights")
def fp16_gradients_refused(impl):
    scaler = _scaler(impl)
    param = nn.Parameter(torch.ones(4, dtype=torch.float16))
    optimizer = torch.optim.SGD([param], lr=0.1)
    param.grad = torch.full((4,), 8.0, dtype=torch.float16)
    try:
        scaler.unscale_(optimizer)
    except ValueError as exc:
        return passed(f"ValueError: {exc}")
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported
        return failed(f"unscale_ raised {type(exc).__name__}: {exc}",
                      "raise ValueError for fp16 gradients, as GradScaler does ('Attempting to unscale FP16 "
                      "gradients.')")
    return failed("unscale_ accepted fp16 gradients (fp16 parameters in the optimizer)",
                  "fp16 parameters given to the optimizer: raise ValueError. Keep fp32 master weights; an fp16 "
                  "weight loses small updates (1 + 2**-11 == 1 in fp16) and fp16 gradients overflow")


# ------------------------------------------------------------------------- Exercise 3.3: step --
@CHECKS.add("3.3", "step skips the optimizer on inf/NaN",
            hint="if unscale_ found an inf or NaN gradient, do not call optimizer.step()")
def step_skips_optimizer_on_overflow(impl):
    for bad, name in ((INF, "inf"), (NAN, "NaN")):
        scaler = _scaler(impl)
        param, optimizer = _param_and_opt()
        before = param.detach().clone()
        _backward(scaler, param, bad=bad)
        scaler.step(optimizer)
        if not torch.equal(before, param.detach()):
            return failed(f"with an {name} gradient the parameters changed (now {param.detach().tolist()})",
                          "step taken on inf/NaN: the optimizer must be skipped when a gradient is not finite, "
                          "or inf/NaN enters the weights and Adam's moments")
        scaler.update()
    return passed("inf and NaN: parameters untouched")


@CHECKS.add("3.3", "step unscales when unscale_ was not called",
            hint="in step(): if unscale_ was not called for this optimizer since the last update(), call it")
def step_unscales_when_unscale_not_called(impl):
    scaler = _scaler(impl)
    param, optimizer = _param_and_opt(lr=0.5)
    ref_param, ref_opt = _param_and_opt(lr=0.5)
    ref = _ref(init_scale=INIT)
    for s, p, o in ((scaler, param, optimizer), (ref, ref_param, ref_opt)):
        _backward(s, p)
        s.step(o)
    if torch.equal(param.detach(), ref_param.detach()):
        return passed("parameters after step() equal GradScaler's (torch.equal)")
    moved, want = (param.detach() - 1).abs().max().item(), (ref_param.detach() - 1).abs().max().item()
    if moved > 100 * max(want, 1e-12):
        return failed(f"the update was {moved / want:.0f} x GradScaler's (step without unscaling: the optimizer "
                      "saw gradients still multiplied by the scale)",
                      "step without unscaling: when the caller did not call unscale_, step() must unscale first "
                      "(the seed notes' step() never does)")
    return failed(f"parameters after step() differ from GradScaler's by {abs(moved - want):.3g}",
                  "step() must unscale (once) and then call optimizer.step()")


@CHECKS.add("3.3", "step after unscale_ does not unscale again",
            hint="after an explicit unscale_, step() must not divide the gradients a second time")
def step_after_unscale_does_not_unscale_again(impl):
    scaler = _scaler(impl)
    param, optimizer = _param_and_opt(lr=0.5)
    _backward(scaler, param)
    scaler.unscale_(optimizer)
    unscaled = param.grad.clone()
    start = param.detach().clone()
    scaler.step(optimizer)
    want = start - 0.5 * unscaled
    if torch.equal(param.detach(), want):
        return passed("one unscale: the step used the unscaled gradients")
    if torch.allclose(param.detach(), start - 0.5 * unscaled / INIT):
        return failed("the step used the gradients divided by the scale twice",
                      "unscaling twice: step() unscaled again after your explicit unscale_; record that "
                      "unscale_ was done for this optimizer and skip it in step()")
    return failed(f"parameters {param.detach().tolist()}, expected {want.tolist()}",
                  "after unscale_, step() should only call optimizer.step() (once, no second unscale)")


@CHECKS.add("3.3", "step returns True when it stepped and False when it skipped",
            hint="return True after optimizer.step(), False when the step was skipped")
def step_returns_whether_it_stepped(impl):
    results = []
    for bad in (None, INF):
        scaler = _scaler(impl)
        param, optimizer = _param_and_opt()
        _backward(scaler, param, bad=bad)
        results.append(scaler.step(optimizer))
        scaler.update()
    if results == [True, False]:
        return passed("finite -> True, inf -> False")
    return failed(f"step() returned {results[0]!r} for a finite step and {results[1]!r} for an overflow",
                  "step() must return True if the optimizer stepped, False if it skipped (a bool, not None)")


@CHECKS.add("3.3", "two optimizers, param groups and parameters without .grad, together (equal to GradScaler)",
            hint="record 'unscaled' and found-inf per optimizer; skip parameters whose .grad is None; walk every "
                 "param group")
def two_optimizers_with_every_kind_of_parameter(impl):
    for case in OPTIMIZER_CASES:
        want = _two_optimizer_run(_ref(init_scale=INIT), case)
        try:
            got = _two_optimizer_run(_scaler(impl), case)
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
            return failed(f"{case}: {type(error).__name__}: {str(error)[:100]}",
                          "unscale_(B) after unscale_(A) is no second call: record 'unscaled' per optimizer"
                          if isinstance(error, RuntimeError) else
                          "skip parameters whose .grad is None (a frozen or unused parameter), in every param group")
        problem = _optimizer_case_problem(case, got, want)
        if problem:
            return failed(f"{case}: {problem[0]}", problem[1])
    return passed(f"{len(OPTIMIZER_CASES)} runs, every pair of (unscale_ first or not, an overflow in A / B / both / "
                  "neither, a parameter without .grad, 1 or 2 param groups): equal to GradScaler's")


# ----------------------------------------------------------------------- Exercise 3.4: update --
@CHECKS.add("3.4", "an overflow backs off the scale",
            hint="in update(): if inf/NaN was found, scale *= backoff_factor")
def overflow_backs_off_scale(impl):
    return _trajectory_check(impl, "FFIFN", 100,
                             "an overflow must multiply the scale by backoff_factor in update()")


@CHECKS.add("3.4", "growth needs growth_interval consecutive finite steps",
            hint="reset the growth counter to 0 on overflow; count only consecutive finite steps")
def growth_needs_consecutive_finite_steps(impl):
    return _trajectory_check(impl, "FFIFFFFFNFFF", 3,
                             "growth must wait for growth_interval *consecutive* finite steps: reset the growth "
                             "counter to 0 on every overflow, and do not count the overflowing step")


@CHECKS.add("3.4", "the growth counter resets after growth",
            hint="after growing the scale, set the growth counter back to 0")
def growth_counter_resets_after_growth(impl):
    return _trajectory_check(impl, "FFFFFFFFF", 3,
                             "after a growth the counter must restart at 0, so the next growth waits another "
                             "growth_interval steps")


@CHECKS.add("3.4", "the scale never grows to inf",
            hint="grow only if scale * growth_factor is finite in fp32 (torch keeps the scale in fp32)")
def scale_never_grows_to_inf(impl):
    top = 2.0**127  # fp32's largest power of two
    scaler = _scaler(impl, init_scale=top, growth_interval=1)
    scales, _ = _drive(scaler, "FFF")
    if scales == [top] * 3:
        return passed("2**127 with growth_interval 1: stays 2**127 (2**128 is inf in fp32)")
    return failed(f"from 2**127 with growth_interval 1 the scale went {_fmt(scales)}",
                  "scale growing to inf: 2**128 overflows fp32 (where GradScaler keeps its scale); grow only if "
                  "the grown scale is finite in fp32, else keep it (and still reset the counter). Once the "
                  "scale is inf, every step overflows")


@CHECKS.add("3.4", "growth_factor, backoff_factor and growth_interval together (equal to GradScaler)",
            hint="grow by growth_factor, back off by backoff_factor, after growth_interval steps: the arguments, "
                 "not 2 and 0.5")
def every_factor_and_interval_together(impl):
    for growth, backoff, interval in FACTOR_CASES:
        settings = dict(growth_factor=growth, backoff_factor=backoff, growth_interval=interval)
        got, _ = _drive(_scaler(impl, **settings), FACTOR_PATTERN)
        want, _ = _drive(_ref(init_scale=INIT, **settings), FACTOR_PATTERN)
        assert want == _factor_rule(FACTOR_PATTERN, growth, backoff, interval)  # the grader's model of GradScaler
        if got != want:
            rule = _factor_diagnosis(got, growth, backoff, interval)
            return failed(f"growth_factor {growth:g}, backoff_factor {backoff:g}, growth_interval {interval}, steps "
                          f"{FACTOR_PATTERN}: scales {_fmt(got)}; GradScaler gives {_fmt(want)}",
                          (f"your update looks like: {rule}. " if rule else "") + "multiply by the growth_factor and "
                          "the backoff_factor you were given, whatever the other settings")
    return passed(f"{len(FACTOR_CASES)} runs, every pair of growth_factor (2, 4, 8), backoff_factor (1/2, 1/4, 1/8) "
                  "and growth_interval (1, 2, 3): scales equal GradScaler's")


@CHECKS.add("3.4", "a run with injected overflows equals torch.amp.GradScaler",
            hint="scale, unscale_, step and update together must reproduce GradScaler exactly")
def run_with_overflows_equals_grad_scaler(impl):
    ours = _full_run(_scaler(impl, growth_interval=3))
    ref = _full_run(_ref(init_scale=INIT, growth_interval=3))
    detail = f"16 fp16 steps, overflows at {sorted(INJECT)}, unscale_ + clip 0.5, AdamW"
    problems = []
    if ours[0] != ref[0]:
        problems.append(f"scales {_fmt(ours[0])} vs GradScaler's {_fmt(ref[0])}")
    if ours[1] != ref[1]:
        problems.append(f"skipped steps {ours[1]} vs {ref[1]}")
    if not problems and not all(torch.equal(a, b) for a, b in zip(ours[2], ref[2])):
        maxdiff = max((a - b).abs().max().item() for a, b in zip(ours[2], ref[2]))
        problems.append(f"final parameters differ (max |diff| {maxdiff:.3g})")
    if problems:
        rule = _diagnose_run(impl)
        return failed(f"{detail}: " + "; ".join(problems),
                      (f"{rule}. " if rule else "") + "compare your scaler with GradScaler step by step (the "
                      "trajectory checks above name the usual mistakes)")
    return passed(f"{detail}: scales, skipped steps and final parameters identical")


# --------------------------------------------------------------- Exercise 3.5: state_dict --
@CHECKS.add("3.5", "state_dict has GradScaler's keys and values",
            hint="return {'scale', 'growth_factor', 'backoff_factor', 'growth_interval', '_growth_tracker'}")
def state_dict_matches_grad_scaler(impl):
    scaler = _scaler(impl, growth_interval=5)
    ref = _ref(init_scale=INIT, growth_interval=5)
    for s in (scaler, ref):
        _drive(s, "FFIFF")
    got, want = scaler.state_dict(), ref.state_dict()
    if set(got) != set(want):
        return failed(f"keys {sorted(got)}; GradScaler's are {sorted(want)}",
                      "use GradScaler's key names, including '_growth_tracker' (the consecutive finite steps so "
                      "far): without it a resumed run starts counting from zero")
    diffs = {k: (got[k], want[k]) for k in want if float(got[k]) != float(want[k])}
    if diffs:
        return failed(f"after steps FFIFF: {diffs} (yours, GradScaler's)",
                      "state_dict() must report the current scale and _growth_tracker, not the initial values")
    return passed(f"{sorted(got)} equal GradScaler's after FFIFF")


@CHECKS.add("3.5", "load_state_dict resumes mid-run (also from GradScaler's state_dict)",
            hint="load_state_dict must restore the scale, the factors, growth_interval and _growth_tracker")
def load_state_dict_resumes_mid_run(impl):
    first, second = "FFIFF", "FIFFFFF"
    full, _ = _drive(_scaler(impl, growth_interval=3), first + second)
    for source in ("LossScaler", "torch.amp.GradScaler"):
        saver = _scaler(impl, growth_interval=3) if source == "LossScaler" else _ref(init_scale=INIT, growth_interval=3)
        head, _ = _drive(saver, first)
        resumed = impl.LossScaler()  # defaults: everything must come from the state_dict
        resumed.load_state_dict(saver.state_dict())
        tail, _ = _drive(resumed, second)
        want = _simulate(first + second, "correct")
        if head + tail != want:
            tracker_lost = head + _drive(_loaded_without_tracker(impl, saver), second)[0] == head + tail
            hint = ("the growth tracker was not restored: resuming restarted the count of finite steps"
                    if tracker_lost else "restore every field of the state_dict")
            return failed(f"saved after {first} from a {source}, resumed with {second}: scales {_fmt(head + tail)}, "
                          f"uninterrupted {_fmt(want)}", hint)
    return passed(f"resumed from ours and from GradScaler's: {_fmt(full)}")


# ---------------------------------------------------------------- Exercise 3.6: train_step --
@CHECKS.add("3.6", "train_step clips the unscaled gradients",
            hint="scaler.unscale_(optimizer) before clip_grad_norm_, then scaler.step and scaler.update")
def train_step_clips_unscaled_gradients(impl):
    x, y = _data()
    ours_model, ref_model = _mlp(), _mlp()
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    start = [p.detach().clone() for p in ref_model.parameters()]
    result = impl.train_step(ours_model, ours_opt, _library_scaler(init_scale=INIT), x, y, _mse,
                             max_grad_norm=0.05, autocast_dtype=torch.float16)
    _, norm = _reference_step(ref_model, ref_opt, _ref(init_scale=INIT), x, y, 0.05)
    if not (isinstance(result, tuple) and len(result) == 2):
        return failed(f"train_step returned {result!r}", "return (loss.item(), stepped)")
    step_ours = torch.cat([(p.detach() - s).flatten() for p, s in zip(ours_model.parameters(), start)]).norm().item()
    step_ref = torch.cat([(p.detach() - s).flatten() for p, s in zip(ref_model.parameters(), start)]).norm().item()
    detail = f"true gradient norm {norm:.3g}, max_grad_norm 0.05: update norm {step_ours:.4g} vs reference {step_ref:.4g}"
    if math.isclose(step_ours, step_ref, rel_tol=1e-5):
        return passed(detail)
    if step_ours < step_ref / 100:
        return failed(detail, "clipping before unscaling: the clip saw gradients multiplied by the scale "
                              f"({INIT:g}), so the true gradient was clipped to 0.05 / {INIT:g}. Call "
                              "scaler.unscale_(optimizer) before clip_grad_norm_")
    if step_ours > step_ref * 1.01:
        return failed(detail, "the gradients were not clipped to max_grad_norm (clip_grad_norm_ missing?)")
    return failed(detail, "unscale_, then clip_grad_norm_(params, max_grad_norm), then scaler.step, scaler.update")


@CHECKS.add("3.6", "train_step skips the step on overflow and updates the scale",
            hint="call scaler.step(optimizer) (not optimizer.step()) and scaler.update() every step")
def train_step_skips_on_overflow_and_updates_scale(impl):
    x, y = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # 2**40 overflows the fp16 backward of this MLP: the first steps must be skipped and the scale halved.
    scaler = _library_scaler(init_scale=2.0**40, growth_interval=1000)
    start = [p.detach().clone() for p in model.parameters()]
    loss, stepped = impl.train_step(model, optimizer, scaler, x, y, _mse, max_grad_norm=None,
                                    autocast_dtype=torch.float16)
    changed = not all(torch.equal(p.detach(), s) for p, s in zip(model.parameters(), start))
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    scale = scaler.get_scale()
    detail = f"init_scale 2**40 (fp16 gradients overflow): stepped={stepped}, parameters changed={changed}, " \
             f"scale after = 2**{math.log2(scale):g}"
    if changed or not finite:
        return failed(detail, "the optimizer stepped on an overflow: call scaler.step(optimizer), which skips "
                              "inf/NaN steps, instead of optimizer.step()")
    if scale != 2.0**39:
        return failed(detail, "the scale did not back off: call scaler.update() after scaler.step() every step")
    if stepped is not False:
        return failed(detail, "return (loss.item(), the value scaler.step returned): False on a skipped step")
    if any(p.grad is not None and p.grad.abs().sum() != 0 for p in model.parameters()):
        return failed(detail, "zero the gradients at the end (optimizer.zero_grad(set_to_none=True)): "
                              "else the next step adds to inf/NaN gradients")
    return passed(detail)


@CHECKS.add("3.6", "train_step over a run equals the GradScaler recipe",
            hint="autocast forward, scaler.scale(loss).backward(), unscale_, clip, scaler.step, scaler.update, "
                 "zero_grad")
def train_step_run_equals_grad_scaler_recipe(impl):
    x, y = _data()
    ours_model, ref_model = _mlp(), _mlp()
    ours_opt = torch.optim.AdamW(ours_model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    ours_scaler = _library_scaler(init_scale=2.0**22, growth_interval=2)
    ref_scaler = _ref(init_scale=2.0**22, growth_interval=2)
    ours_losses, ref_losses = [], []
    for _step in range(8):
        ours_losses.append(impl.train_step(ours_model, ours_opt, ours_scaler, x, y, _mse, max_grad_norm=1.0,
                                           autocast_dtype=torch.float16)[0])
        ref_losses.append(_reference_step(ref_model, ref_opt, ref_scaler, x, y, 1.0)[0])
    same = all(torch.equal(a, b) for a, b in zip(ours_model.parameters(), ref_model.parameters()))
    detail = f"8 steps from init_scale 2**22: losses {ours_losses[-1]:.6g} vs {ref_losses[-1]:.6g}, scale " \
             f"{ours_scaler.get_scale():g} vs {ref_scaler.get_scale():g}"
    if ours_losses == ref_losses and same and ours_scaler.get_scale() == ref_scaler.get_scale():
        return passed(detail + ", parameters identical")
    return failed(detail, "follow the recipe exactly: forward under torch.autocast(dtype=autocast_dtype), "
                          "scaler.scale(loss).backward(), unscale_ + clip when max_grad_norm is given, "
                          "scaler.step, scaler.update, optimizer.zero_grad")


@CHECKS.add("3.6", "options together: autocast dtype x scaler x clipping x scheduler (equal to the library's step)",
            hint="each option must keep working when the others are on: autocast_dtype (None, bf16, fp16), scaler "
                 "(None, GradScaler, LossScaler), max_grad_norm, scheduler")
def train_step_options_together(impl):
    for case in STEP_CASES:
        want = _step_run(_library_train_step, case)
        try:
            got = _step_run(impl.train_step, case)
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
            hint = ("scaler=None must work (fp32 and bf16 need no scaling): a disabled "
                    "torch.amp.GradScaler(enabled=False) passes everything through" if case.scaler is None else
                    "train_step(..., scheduler=None): step the scheduler once per call" if "scheduler" in str(error)
                    else "the scaler refused a call: every call of train_step must run scale(loss).backward(), "
                         "unscale_ (only to clip), step(), then scaler.update()" if isinstance(error, RuntimeError)
                    else "every combination of the options must run")
            return failed(f"{case}: train_step raised {type(error).__name__}: {str(error)[:100]}", hint)
        problem = _step_problem(case, got, want)
        if problem:
            return failed(f"{case}: {problem[0]}", problem[1])
    return passed(f"{len(STEP_CASES)} runs of 3 steps, every pair of (fp32 / bf16 / fp16 autocast, no scaler / "
                  "GradScaler / LossScaler, clipping, scheduler, an overflowing batch) and a skipped fp16 step with a "
                  "scheduler: equal to the library's step")


# ------------------------------------------------------------- Exercise 3.7: stochastic rounding --
# The checks are in efftrain_lib/grading/loss_scaling_rounding.py; their names, hints and order are here.
CHECKS.add("3.7", "every value becomes one of the two bf16 values around it (every kind of input)",
           hint="bf16 is fp32's top 16 bits: truncate toward zero, or step one bf16 value away from zero; keep "
                "NaN, +-inf and exact values; any shape and strides")(rounds_to_a_bracketing_bf16_value)
CHECKS.add("3.7", "unbiased: away from zero with probability (distance) / (gap)",
           hint="round away from zero with probability (|x| - |x truncated|) / (the bf16 step), one draw per "
                "element")(rounding_is_unbiased)
CHECKS.add("3.7", "torch.manual_seed reproduces a result",
           hint="draw from torch's default generator (torch.randint(0, 1 << 16, x.shape) or torch.rand_like(x))"
           )(reproducible_under_manual_seed)
CHECKS.add("3.7", "TypeError for anything but a float32 tensor",
           hint="if x.dtype != torch.float32: raise TypeError(...)")(non_float32_input_is_a_type_error)
CHECKS.add("3.7", "bf16 weights keep updates under half a bf16 step (on average)",
           hint="the expected result must be x itself: then many small updates add up exactly on average"
           )(bf16_weights_keep_small_updates)

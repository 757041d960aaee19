"""Graders for Chapter 4 (gradient accumulation): exercises 4.1-4.3 in <impl>/accumulation.py.

Behaviour only, through the exercise API:
  accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None, scheduler=None,
                    autocast_dtype=None) -> float
  GradientAccumulator(model, optimizer, accumulation_steps, *, scaler=None, max_grad_norm=None,
                      scheduler=None, autocast_dtype=None).train(batches) -> list[float]
  streaming_accumulation_step(model, optimizer, micro_batches, *, the same options) -> float
Exercise 4.3's checks live in efftrain_lib/grading/accumulation_stream.py (registered at the end here).

Options together: 4.1, 4.2 and 4.3 each run every pair of (autocast dtype fp32 / bf16 / fp16 with a
scaler, GradScaler, clipping, scheduler, and the kind of input: equal / unequal token counts with an
unlabelled micro-batch / a single micro-batch; a generator or a list) against the library's one training
step (efftrain_lib/training.py training_step) under the same options; a failure names the combination.

The reference is a full-batch step: the micro-batches of a window concatenated into one batch, one
forward, the token-mean cross-entropy (-100 ignored), one backward (and, where a check needs it,
torch.amp.GradScaler, clip_grad_norm_ and an LR scheduler around that single step). The optimizer
handed to the learner is an SGD that records the gradient and learning rate it is asked to apply
at every step, so a check sees exactly what each step used. The model is a token-wise MLP
(Embedding -> Linear -> Tanh -> Linear): nothing couples positions or samples, so accumulation is
exactly equivalent in exact arithmetic and only float rounding separates the two.

When a gradient is wrong, the grader recomputes the gradients that the classic mistakes would give
(mean of per-micro-batch means, loss not divided, only the last micro-batch, ignored positions counted,
partial window divided by k, clipping per micro-batch, ...) and names the one that matches.

Tolerances (float32; the same sums in another order differ by ~1e-8 here):
  gradients and parameters   |got - ref| <= 1e-6 + 1e-5 * max|ref|   (a mistake differs by >= 1e-2 relative)
  returned losses            relative 1e-5
Under bf16 or fp16 autocast (the same sums, rounded to 8 or 11 bits in other places): gradients within
1e-6 + 1e-2 * max|ref|, losses relative 1e-2; a dropped option is off by far more (clipping: 5x)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from efftrain_lib.grading import Checks, failed, passed
from efftrain_lib.grading.accumulation_stream import (
    stream_bad_input_clear_errors_no_step, stream_gradient_equals_full_batch, stream_options_together,
    stream_reads_one_micro_batch_at_a_time, stream_returns_window_token_mean_loss,
)
from efftrain_lib.grading.accumulation_support import (
    _accumulator, _call_step, _ce_sum, _clip_per_micro_batch, _close, _combination_window, _count, _diff,
    _equal_batches, _equal_window, _full_batch, _gradient_check, _library_step, _max_norm, _model,
    _name_gradient_mistake, _ratio, _Recorder, _run, _run_problem, _scaler_order_problem, _scaler_run, _scheduler,
    _SpyScaler, _steps_hint, _unequal_batches, _unequal_window, _weighted, _windows, ACCUMULATOR_CASES, IGNORE,
    REFERENCE, SCALE, SEQ, STEP_CASES, VOCAB, WINDOWS,
)
from efftrain_lib.training import train_windows

EXERCISES = {
    "4.1": "accumulation_step: one window, one step, exactly the big batch",
    "4.2": "GradientAccumulator: windows of k, the partial window included",
    "4.3": "streaming_accumulation_step: a stream read one micro-batch at a time",
}
CHECKS = Checks()


@CHECKS.add("4.1", "one optimizer step per window",
            hint="accumulate the k backward passes, then call optimizer.step() exactly once")
def one_optimizer_step_per_window(impl):
    model = _model()
    optimizer = _Recorder(model)
    window = _equal_window()
    _call_step(impl, model, optimizer, window)
    steps = len(optimizer.seen_grads)
    if steps != 1:
        return failed(f"{steps} optimizer steps for a window of {len(window)} micro-batches; expected 1",
                      "the optimizer stepped per micro-batch: step once per window, after the last backward"
                      if steps > 1 else "call optimizer.step() once, after the window's last backward")
    return passed(f"1 step for {len(window)} micro-batches")


@CHECKS.add("4.1", "equal micro-batches: the gradient equals the full batch",
            hint="divide each micro-batch's loss so that the k pieces add up to the window's mean")
def equal_micro_batches_gradient_equals_full_batch(impl):
    diff, problem = _gradient_check(impl, _equal_window())
    return problem or passed(f"max |diff| {diff:.1e} vs {REFERENCE} (4 micro-batches of 2 x {SEQ} tokens)")


@CHECKS.add("4.1", "unequal token counts: the gradient equals the full batch",
            hint="sum-reduce each micro-batch's cross-entropy and divide by the labelled-token count of the "
                 "whole window")
def unequal_tokens_gradient_equals_full_batch(impl):
    diff, problem = _gradient_check(impl, _unequal_window())
    counts = [_count(y) for _, y in _unequal_window()]
    return problem or passed(f"max |diff| {diff:.1e} vs {REFERENCE} (token counts {counts})")


@CHECKS.add("4.1", "returns the window's token-mean loss",
            hint="return the token-mean cross-entropy over the whole window (the big batch's loss), as a float")
def returns_window_token_mean_loss(impl):
    window = _unequal_window(seed=10)
    model = _model()
    _, ref_loss = _full_batch(model, window)
    got = _call_step(impl, model, _Recorder(model), window)
    try:
        value = float(got)
    except (TypeError, ValueError):
        return failed(f"returned {got!r:.60}, not a number", "return loss as a Python float (loss.item())")
    if not math.isclose(value, ref_loss, rel_tol=1e-5):
        m = _model()
        with torch.no_grad():
            means = [(_ce_sum(m(x), y) / _count(y)).item() for x, y in window]
        names = {"the last micro-batch's loss": means[-1], "the mean of per-micro-batch means": sum(means) / len(means),
                 "the sum of per-micro-batch means (not divided)": sum(means),
                 "the last micro-batch's piece (its sum / window tokens)": _ce_sum(m(window[-1][0]), window[-1][1]).item()
                 / sum(_count(y) for _, y in window)}
        which = next((n for n, v in names.items() if math.isclose(value, v, rel_tol=1e-5)), None)
        return failed(f"returned {value:.6g}; the window's token-mean loss is {ref_loss:.6g}",
                      (f"that is {which}: " if which else "") +
                      "return the sum of every micro-batch's normalized loss, i.e. the whole window's token mean")
    return passed(f"{value:.6g} == {ref_loss:.6g} (relative tolerance 1e-5)")


@CHECKS.add("4.1", "two windows in a row: gradients do not leak",
            hint="zero the gradients once per window (before its first backward or after its step)")
def gradients_do_not_leak_between_windows(impl):
    model = _model()
    first, second = _equal_window(seed=20), _unequal_window(seed=30)
    ref1, _ = _full_batch(model, first)
    ref2, _ = _full_batch(model, second)
    optimizer = _Recorder(model)  # lr 0: the parameters stay put, so both references stay valid
    _call_step(impl, model, optimizer, first)
    _call_step(impl, model, optimizer, second)
    if len(optimizer.seen_grads) != 2:
        return failed(f"{len(optimizer.seen_grads)} optimizer steps for two windows; expected 2",
                      _steps_hint(len(optimizer.seen_grads), 2))
    got = optimizer.seen_grads[1]
    if _close(got, ref1 + ref2):
        return failed(f"second window's gradient = first + second window's (max |diff| {_diff(got, ref2):.2e} "
                      f"vs {REFERENCE})",
                      "gradients leak from one window into the next: zero_grad is missing between windows "
                      "(call optimizer.zero_grad() at the start of the window or after the step)")
    if not _close(got, ref2):
        return failed(f"second window: max |diff| {_diff(got, ref2):.2e} vs {REFERENCE}",
                      _name_gradient_mistake(model, second, got, ref2))
    return passed(f"max |diff| {_diff(got, ref2):.1e} vs {REFERENCE} on the second window")


@CHECKS.add("4.1", "clipping: the window's gradient, clipped once",
            hint="clip_grad_norm_ once per window, after the last backward and before optimizer.step()")
def clips_window_gradient_once(impl):
    window = _unequal_window(seed=40)
    model = _model()
    ref, _ = _full_batch(model, window)
    norm = ref.norm().item()
    max_norm = norm / 5  # well below the gradient's norm, so clipping matters
    clipped, _ = _full_batch(model, window, clip=max_norm)
    optimizer = _Recorder(model)
    _call_step(impl, model, optimizer, window, max_grad_norm=max_norm)
    if len(optimizer.seen_grads) != 1:
        return failed(f"{len(optimizer.seen_grads)} optimizer steps for one window",
                      _steps_hint(len(optimizer.seen_grads), 1))
    got = optimizer.seen_grads[0]
    if not _close(got, clipped):
        if _close(got, ref):
            hint = "max_grad_norm ignored: call torch.nn.utils.clip_grad_norm_(params, max_grad_norm) before the step"
        elif _close(got, _clip_per_micro_batch(model, window, max_norm)):
            hint = "clipped per micro-batch: clipping partial sums is not clipping the window's gradient; " \
                   "clip once, after the last backward"
        else:
            hint = _name_gradient_mistake(model, window, got, clipped, clip=max_norm)
        return failed(f"norm {got.norm().item():.4g} (max_grad_norm {max_norm:.4g}); max |diff| "
                      f"{_diff(got, clipped):.2e} vs {REFERENCE} with clip_grad_norm_", hint)
    return passed(f"max |diff| {_diff(got, clipped):.1e} vs {REFERENCE} clipped to {max_norm:.3g} "
                  f"(unclipped norm {norm:.3g})")


@CHECKS.add("4.1", "GradScaler: scale every micro-batch, step and update once",
            hint="per micro-batch: scaler.scale(loss).backward(); per window: scaler.step(optimizer), scaler.update()")
def grad_scaler_scales_each_micro_batch_steps_once(impl):
    window = _unequal_window(seed=50)
    model, optimizer, scaler = _scaler_run(impl, window)
    problem = _scaler_order_problem(scaler.calls, len(window))
    if problem:
        return failed(f"scaler calls: {', '.join(scaler.calls)}", problem)
    ref, _ = _full_batch(_model(), window)
    if len(optimizer.seen_grads) != 1:
        return failed(f"{len(optimizer.seen_grads)} optimizer steps", "scaler.step(optimizer) once per window")
    got = optimizer.seen_grads[0]
    if not _close(got, ref):
        c = _ratio(got, ref)
        if c is not None and math.isclose(c, SCALE, rel_tol=1e-3):
            hint = "the gradient is still scaled (x65536-style): step through scaler.step(optimizer), which unscales"
        elif c is not None and math.isclose(c, 1 / SCALE, rel_tol=1e-3):
            hint = "the loss is not scaled but the scaler unscales: use scaler.scale(loss).backward()"
        else:
            hint = _name_gradient_mistake(_model(), window, got, ref)
        return failed(f"step gradient max |diff| {_diff(got, ref):.2e} vs {REFERENCE} with GradScaler", hint)
    if scaler.get_scale() != SCALE * 2:
        return failed(f"scale {scaler.get_scale():g} after one window (growth_interval 1, init {SCALE:g}); expected "
                      f"{SCALE * 2:g}", "scaler.update() once per window, after scaler.step")
    return passed(f"max |diff| {_diff(got, ref):.1e} vs {REFERENCE}; calls {', '.join(scaler.calls)}")


@CHECKS.add("4.1", "GradScaler + clipping: unscale_ before clipping",
            hint="scaler.unscale_(optimizer), then clip_grad_norm_, then scaler.step(optimizer), scaler.update()")
def grad_scaler_unscales_before_clipping(impl):
    window = _unequal_window(seed=60)
    ref, _ = _full_batch(_model(), window)
    max_norm = ref.norm().item() / 5
    clipped, _ = _full_batch(_model(), window, clip=max_norm)
    model, optimizer, scaler = _scaler_run(impl, window, max_norm=max_norm)
    problem = _scaler_order_problem(scaler.calls, len(window))
    if problem:
        return failed(f"scaler calls: {', '.join(scaler.calls)}", problem)
    got = optimizer.seen_grads[0] if optimizer.seen_grads else torch.zeros_like(ref)
    if not _close(got, clipped):
        c = _ratio(got, clipped)
        if c is not None and math.isclose(c, 1 / SCALE, rel_tol=1e-3):
            hint = "clipped before unscale_: the scaled gradient's norm is scale x larger, so clipping cut it " \
                   "by the scale too; call scaler.unscale_(optimizer) before clip_grad_norm_"
        elif _close(got, ref):
            hint = "max_grad_norm ignored with a scaler: unscale_, clip_grad_norm_, then scaler.step"
        elif _close(got, _clip_per_micro_batch(_model(), window, max_norm)):
            hint = "clipped per micro-batch: clip once, after the last backward (and after unscale_)"
        else:
            hint = _name_gradient_mistake(_model(), window, got, clipped, clip=max_norm)
        return failed(f"norm {got.norm().item():.4g}, max_grad_norm {max_norm:.4g}; max |diff| "
                      f"{_diff(got, clipped):.2e} vs {REFERENCE} (GradScaler, clip)", hint)
    return passed(f"max |diff| {_diff(got, clipped):.1e} vs {REFERENCE} (GradScaler, clip to {max_norm:.3g})")


@CHECKS.add("4.1", "scheduler: one step per optimizer step",
            hint="call scheduler.step() once, after optimizer.step()")
def scheduler_steps_once_per_optimizer_step(impl):
    model = _model()
    optimizer = _Recorder(model, lr=0.1)
    scheduler = _scheduler(optimizer)
    window = _equal_window(seed=70)
    _call_step(impl, model, optimizer, window, scheduler=scheduler)
    advanced = scheduler.last_epoch
    if advanced != 1:
        return failed(f"the scheduler advanced {advanced} steps in one window of {len(window)} micro-batches",
                      f"scheduler stepped per micro-batch: step it once per optimizer step (the warm-up and decay "
                      f"would run {len(window)}x too fast)" if advanced == len(window) else
                      "call scheduler.step() exactly once per window, after optimizer.step()")
    if len(optimizer.seen_lrs) != 1:
        return failed(f"{len(optimizer.seen_lrs)} optimizer steps for one window (lrs {optimizer.seen_lrs})",
                      "the optimizer stepped per micro-batch: one optimizer step and one scheduler step per window")
    if optimizer.seen_lrs != [0.1]:
        return failed(f"the optimizer step used lr {optimizer.seen_lrs}; expected [0.1]",
                      "scheduler stepped before optimizer.step(): the first step must use the initial lr")
    return passed("1 scheduler step, after the optimizer step (lr 0.1 used)")


@CHECKS.add("4.1", "bad input: clear errors, no step",
            hint="raise ValueError for an empty window, a window with no labelled position, and labels whose "
                 "shape does not match the logits")
def bad_window_clear_errors_no_step(impl):
    cases = {"an empty window": []}
    window = _equal_window(seed=80, k=2)
    cases["a window with no labelled position (all labels -100)"] = [(x, torch.full_like(y, IGNORE)) for x, y in window]
    cases["labels whose shape does not match the logits (transposed)"] = [(x, y.T.contiguous()) for x, y in window]
    for what, bad in cases.items():
        model = _model()
        optimizer = _Recorder(model, lr=0.1)
        before = [p.detach().clone() for p in model.parameters()]
        try:
            _call_step(impl, model, optimizer, bad)
        except ValueError as error:
            if any(not torch.equal(a, p) for a, p in zip(before, model.parameters())) or optimizer.seen_grads:
                return failed(f"{what}: raised ValueError, but only after an optimizer step",
                              "check the window before any optimizer step")
            if "shape" in what and "shape" not in str(error).lower():
                return failed(f"{what}: ValueError without the word 'shape': {error}",
                              "say which shapes do not match: labels must have the logits' leading shape")
            continue
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
            return failed(f"{what}: raised {type(error).__name__}: {str(error)[:80]}",
                          f"raise ValueError with a clear message for {what}")
        nan = any(not bool(torch.isfinite(g).all()) for g in optimizer.seen_grads)
        detail = f"{what}: no error" + (" and the step used NaN gradients (0/0)" if nan else "")
        hint = {"an empty window": "raise ValueError for an empty window (there is nothing to step on)",
                "a window with no labelled position (all labels -100)":
                    "a window with no labelled position has a 0/0 token mean: raise ValueError instead of "
                    "stepping with NaN",
                }.get(what, "labels of a wrong shape can pair every logit with the wrong label: check "
                            "labels.shape == logits.shape[:-1] and raise ValueError naming both shapes")
        return failed(detail, hint)
    return passed("ValueError for an empty window, an unlabelled window and mismatched label shapes; no step")


@CHECKS.add("4.1", "options together: autocast dtype x GradScaler x clipping x scheduler x window",
            hint="each option must keep working when the others are on: autocast_dtype (None, bf16, fp16), scaler, "
                 "max_grad_norm, scheduler, on equal, unequal and single-micro-batch windows")
def step_options_together(impl):
    for case in STEP_CASES:
        window = _combination_window(case.window, seed=800)
        max_norm = _max_norm([window])

        def reference(other):
            return _run(lambda m, o, options, run: [_library_step(m, o, window, **options)], other, max_norm)

        want = reference(case)
        where = f"{case}, {WINDOWS[case.window]}"
        try:
            got = _run(lambda m, o, options, run: [impl.accumulation_step(m, o, window, **options)], case, max_norm)
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
            return failed(f"{where}: raised {type(error).__name__}: {str(error)[:100]}",
                          "accumulation_step(..., autocast_dtype=None): every combination of the options must run"
                          if "autocast_dtype" in str(error) else "every combination of the options must run")
        problem = _run_problem(case, got, want, [window], max_norm, reference)
        if problem:
            return failed(f"{where}: {problem[0]}", problem[1])
    return passed(f"{len(STEP_CASES)} cases, every pair of (fp32 / bf16 / fp16 autocast, GradScaler, clipping, "
                  "scheduler, equal / unequal with an unlabelled micro-batch / single window): equal to the "
                  "library's step")


# --------------------------------------------------------- Exercise 4.2: GradientAccumulator --
@CHECKS.add("4.2", "accumulation_steps < 1 is an error",
            hint="raise ValueError in __init__ when accumulation_steps < 1")
def accumulation_steps_below_one_is_an_error(impl):
    for bad in (0, -2):
        model = _model()
        try:
            acc = _accumulator(impl, model, _Recorder(model), bad)
            acc.train(_equal_batches(2))
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001
            return failed(f"accumulation_steps={bad}: {type(error).__name__}: {str(error)[:80]}",
                          "raise ValueError('accumulation_steps must be >= 1') in __init__")
        return failed(f"accumulation_steps={bad} was accepted",
                      "accumulation_steps < 1 must raise ValueError (k = 0 would never step, or divide by zero)")
    return passed("ValueError for 0 and -2")


@CHECKS.add("4.2", "windows of k, one step each, the final partial window included",
            hint="walk the batches k at a time; step after each window, and after the last, shorter one")
def windows_of_k_with_final_partial_window(impl):
    model = _model()
    optimizer = _Recorder(model)
    batches = _equal_batches(10)
    losses = _accumulator(impl, model, optimizer, 4).train(batches)
    steps = len(optimizer.seen_grads)
    if steps != 3:
        hint = ("final partial window dropped: the last 2 batches must get their own (shorter) window"
                if steps == 2 else _steps_hint(steps, 3))
        return failed(f"{steps} optimizer steps for 10 batches with k = 4; expected 3 (windows of 4, 4, 2)", hint)
    if not isinstance(losses, (list, tuple)) or len(losses) != 3:
        return failed(f"train returned {losses!r:.60}; expected a list of 3 losses", "return one loss per window")
    return passed("3 steps (windows of 4, 4, 2), 3 losses")


@CHECKS.add("4.2", "every window equals a full-batch step, the partial one too",
            hint="normalize every window by its own token count; a partial window of m batches is not divided by k")
def every_window_equals_full_batch_step(impl):
    model = _model()
    optimizer = _Recorder(model)
    batches = _equal_batches(10, seed=300)
    _accumulator(impl, model, optimizer, 4).train(batches)
    refs = [_full_batch(model, w)[0] for w in _windows(batches, 4)]
    if len(optimizer.seen_grads) != len(refs):
        return failed(f"{len(optimizer.seen_grads)} optimizer steps; expected {len(refs)} (windows of 4, 4, 2)",
                      _steps_hint(len(optimizer.seen_grads), len(refs)))
    worst = 0.0
    for i, (got, ref, window) in enumerate(zip(optimizer.seen_grads, refs, _windows(batches, 4))):
        if not _close(got, ref):
            what = f"window {i + 1} of {len(refs)} ({len(window)} batches): max |diff| {_diff(got, ref):.2e} vs {REFERENCE}"
            c = _ratio(got, ref)
            if c is not None and len(window) < 4 and math.isclose(c, len(window) / 4, rel_tol=1e-3):
                return failed(what, f"partial window divided by k: its gradient is {len(window)}/4 of the right "
                                    f"one; normalize by the window's own token count (or divide by m = {len(window)})")
            if i > 0 and _close(got, ref + refs[i - 1]):
                return failed(what, "gradients leak from one window into the next: zero_grad is missing "
                                    "between windows")
            return failed(what, _name_gradient_mistake(model, window, got, ref, k=4))
        worst = max(worst, _diff(got, ref))
    return passed(f"max |diff| {worst:.1e} vs {REFERENCE}, windows of 4, 4, 2")


@CHECKS.add("4.2", "unequal token counts: each window normalized by its own token count",
            hint="sum-reduce the loss and divide by the labelled-token count of each whole window")
def windows_normalized_by_own_token_count(impl):
    model = _model()
    optimizer = _Recorder(model)
    batches = _unequal_batches()
    _accumulator(impl, model, optimizer, 3).train(batches)
    wins = _windows(batches, 3)
    if len(optimizer.seen_grads) != len(wins):
        return failed(f"{len(optimizer.seen_grads)} optimizer steps for 7 batches, k = 3; expected 3",
                      _steps_hint(len(optimizer.seen_grads), 3))
    all_tokens = sum(_count(y) for _, y in batches)
    worst = 0.0
    for i, (got, window) in enumerate(zip(optimizer.seen_grads, wins)):
        ref, _ = _full_batch(model, window)
        if not _close(got, ref):
            counts = [_count(y) for _, y in window]
            extra = {f"normalized by the token count of all batches ({all_tokens}), not of the window "
                     f"({sum(counts)})": _weighted(model, window, lambda j, y: 1 / all_tokens)}
            return failed(f"window {i + 1} (token counts {counts}): max |diff| {_diff(got, ref):.2e} vs {REFERENCE}",
                          _name_gradient_mistake(model, window, got, ref, k=3, extra=extra))
        worst = max(worst, _diff(got, ref))
    return passed(f"max |diff| {worst:.1e} vs {REFERENCE} over 3 windows of unequal token counts")


@CHECKS.add("4.2", "returns one token-mean loss per window",
            hint="train returns [loss of window 1, loss of window 2, ...], each the window's token mean")
def train_returns_one_loss_per_window(impl):
    model = _model()
    batches = _unequal_batches(seed=400)
    refs = [_full_batch(model, w)[1] for w in _windows(batches, 3)]
    losses = _accumulator(impl, model, _Recorder(model), 3).train(batches)
    try:
        values = [float(v) for v in losses]
    except (TypeError, ValueError):
        return failed(f"train returned {losses!r:.60}", "return a list of floats, one per window")
    if len(values) != len(refs) or not all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(values, refs)):
        return failed(f"losses {[round(v, 5) for v in values]}; the windows' token means are "
                      f"{[round(v, 5) for v in refs]}",
                      "each entry is the token-mean loss of one whole window (the big batch's loss)")
    return passed(f"{len(values)} losses equal the windows' token means (relative 1e-5)")


@CHECKS.add("4.2", "training equals full-batch training (SGD with momentum)",
            hint="each window must be exactly one full-batch step: same gradient, one step, zero_grad between")
def training_equals_full_batch_training(impl):
    batches = _unequal_batches(seed=500)
    ours = _model()
    _accumulator(impl, ours, _Recorder(ours, lr=0.5, momentum=0.9), 3).train(batches)
    ref = _model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    for window in _windows(batches, 3):
        x = torch.cat([b[0] for b in window])
        y = torch.cat([b[1] for b in window])
        F.cross_entropy(ref(x).reshape(-1, VOCAB), y.reshape(-1), ignore_index=IGNORE).backward()
        opt.step()
        opt.zero_grad()
    got = torch.cat([p.detach().reshape(-1) for p in ours.parameters()])
    want = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    if not _close(got, want):
        return failed(f"parameters after 7 batches (k = 3) max |diff| {_diff(got, want):.2e} vs full-batch training",
                      "the windows' steps differ from full-batch steps: see the checks above for which part")
    return passed(f"parameters max |diff| {_diff(got, want):.1e} vs full-batch training, 3 steps")


@CHECKS.add("4.2", "scheduler: one step per window",
            hint="pass the scheduler to each window's step: scheduler.step() once per optimizer step")
def train_scheduler_steps_once_per_window(impl):
    model = _model()
    optimizer = _Recorder(model, lr=0.1)
    scheduler = _scheduler(optimizer)
    _accumulator(impl, model, optimizer, 4, scheduler=scheduler).train(_equal_batches(10, seed=600))
    expected = [0.1, 0.1 / 2, 0.1 / 3]
    if len(optimizer.seen_lrs) != 3:
        return failed(f"{len(optimizer.seen_lrs)} optimizer steps for 10 batches, k = 4; expected 3",
                      _steps_hint(len(optimizer.seen_lrs), 3))
    if scheduler.last_epoch != 3 or not all(math.isclose(a, b) for a, b in zip(optimizer.seen_lrs, expected)):
        return failed(f"scheduler advanced {scheduler.last_epoch} steps for 3 windows; lrs used "
                      f"{[round(v, 4) for v in optimizer.seen_lrs]}, expected {[round(v, 4) for v in expected]}",
                      "scheduler stepped per micro-batch: step it once per optimizer step"
                      if scheduler.last_epoch == 10 else "one scheduler.step() per window, after the optimizer step")
    return passed("3 scheduler steps for 3 windows, lrs 0.1, 0.05, 0.0333")


@CHECKS.add("4.2", "GradScaler: one update per window",
            hint="pass the scaler to each window's step: scale per micro-batch, step and update once per window")
def train_grad_scaler_updates_once_per_window(impl):
    model = _model()
    optimizer = _Recorder(model)
    scaler = _SpyScaler(init_scale=SCALE, growth_interval=1)
    batches = _equal_batches(10, seed=700)
    _accumulator(impl, model, optimizer, 4, scaler=scaler).train(batches)
    updates, scales = scaler.calls.count("update"), scaler.calls.count("scale")
    if "update-without-step" in scaler.calls or updates != 3 or scales != 10:
        return failed(f"{scales} scale() and {updates} update() calls for 10 batches in 3 windows; expected 10 and 3",
                      "scaler.update() per micro-batch: update once per window" if updates > 3 else
                      "scale every micro-batch's loss; step and update the scaler once per window")
    if scaler.get_scale() != SCALE * 8:
        return failed(f"scale {scaler.get_scale():g}, expected {SCALE * 8:g} (growth_interval 1, 3 windows)",
                      "one scaler.update() per window")
    for i, (got, window) in enumerate(zip(optimizer.seen_grads, _windows(batches, 4))):
        ref, _ = _full_batch(model, window)
        if not _close(got, ref):
            c = _ratio(got, ref)
            hint = ("the gradient is still scaled or unscaled twice: let scaler.step(optimizer) unscale it"
                    if c is not None and (math.isclose(c, SCALE, rel_tol=1e-3) or math.isclose(c, 1 / SCALE, rel_tol=1e-3))
                    else _name_gradient_mistake(model, window, got, ref, k=4))
            return failed(f"with a GradScaler, window {i + 1}: max |diff| {_diff(got, ref):.2e} vs {REFERENCE}", hint)
    return passed("10 scale() calls, 3 update() calls, gradients equal the full batch's")


@CHECKS.add("4.2", "options together: autocast dtype x GradScaler x clipping x scheduler, every window",
            hint="pass every option to every window's step, the final partial one too")
def accumulator_options_together(impl):
    batches = _unequal_batches(seed=850)
    windows = _windows(batches, 3)
    max_norm = _max_norm(windows)

    def library(model, optimizer, options, run):
        return train_windows(model, optimizer, windows, progress=False, **options).losses

    for case in ACCUMULATOR_CASES:
        want = _run(library, case, max_norm)
        where = f"{case}, 7 batches in windows of 3, 3, 1"
        try:
            got = _run(lambda m, o, options, run: _accumulator(impl, m, o, 3, **options).train(batches), case, max_norm)
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
            return failed(f"{where}: raised {type(error).__name__}: {str(error)[:100]}",
                          "GradientAccumulator(..., autocast_dtype=None): every combination of the options must run")
        problem = _run_problem(case, got, want, windows, max_norm, lambda other: _run(library, other, max_norm))
        if problem:
            return failed(f"{where}: {problem[0]}", problem[1])
    return passed(f"{len(ACCUMULATOR_CASES)} cases, every pair of (fp32 / bf16 / fp16 autocast, GradScaler, "
                  "clipping, scheduler) over windows of 3, 3, 1: equal to the library's steps")


# ------------------------------------------------------------- Exercise 4.3: a stream --
# The checks are in efftrain_lib/grading/accumulation_stream.py; their names, hints and order are here.
CHECKS.add("4.3", "reads one micro-batch at a time (the next only after the previous one's backward)",
           hint="for inputs, labels in micro_batches: forward, backward, count; never list() the stream"
           )(stream_reads_one_micro_batch_at_a_time)
CHECKS.add("4.3", "a stream of unequal token counts: the gradient equals the full batch",
           hint="backward each micro-batch's summed loss, count its labelled tokens, and divide the gradients by "
                "the count after the last backward (gradients are linear)")(stream_gradient_equals_full_batch)
CHECKS.add("4.3", "returns the stream's token-mean loss",
           hint="return the summed losses / the labelled tokens counted, as a float")(stream_returns_window_token_mean_loss)
CHECKS.add("4.3", "options together: autocast dtype x GradScaler x clipping x scheduler x generator or list",
           hint="divide the gradients by the count before unscale_ and clipping; then the window's usual end"
           )(stream_options_together)
CHECKS.add("4.3", "bad input: an empty or unlabelled stream is an error, no step",
           hint="after the stream: if the count is 0, zero the gradients and raise ValueError"
           )(stream_bad_input_clear_errors_no_step)

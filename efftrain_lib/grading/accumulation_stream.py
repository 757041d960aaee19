"""The checks of Exercise 4.3, accumulation over a stream (`streaming_accumulation_step` in
<impl>/accumulation.py). The accumulation grader (efftrain_lib/grading/accumulation.py) registers them: it owns
their names, hints and report order; the code is here, on the grader's helpers
(efftrain_lib/grading/accumulation_support.py).

The stream is an iterator the grader watches: at every pull it records how many forwards and backward passes
the model has run, so reading ahead (the whole window held at once) is seen, whatever else the code does.
References: a full-batch step (fp32), and the library's one training step over the same stream
(`training.training_step(..., lookahead=False)`) under every pair of options. Tolerances: those of the
accumulation grader (fp32: |got - ref| <= 1e-6 + 1e-5 max |ref|; 16-bit autocast: 1e-6 + 1e-2 max |ref|).
"""

from __future__ import annotations

import math

import torch

from efftrain_lib.grading import failed, passed
from efftrain_lib.grading.accumulation_support import (
    _close, _combination_window, _count, _diff, _full_batch, _instrumented, _max_norm, _model, _name_gradient_mistake,
    _Recorder, _run, _run_problem, _weighted, IGNORE, Options, REFERENCE, Run, STREAM_CASES,
)
from efftrain_lib.training import training_step


class _Watched:
    """A stream of micro-batches that notes in run.pulls, at each read, (forwards, backwards) the model had run."""

    def __init__(self, window, run: Run):
        self._items, self._run = iter(window), run

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._items)
        self._run.pulls.append((len(self._run.autocast), self._run.backwards))
        return item


def _reading_problem(run: Run, window) -> tuple[str, str] | None:
    """Micro-batch i may be read only after micro-batch i - 1's forward and backward (one that holds no
    labelled position may skip its backward: there is nothing to backpropagate)."""
    labelled_before = 0
    for i, (forwards, backwards) in enumerate(run.pulls):
        if forwards < i:
            return (f"micro-batch {i + 1} of {len(window)} was read after only {forwards} forward(s): the stream "
                    "was read ahead", "read ahead: the whole window was held at once; read one micro-batch, run its "
                    "forward and backward, then read the next (count the tokens as they come)")
        if backwards < labelled_before:
            return (f"micro-batch {i + 1} was read before micro-batch {i}'s backward",
                    "read the next micro-batch only after the previous one's backward: its activations are freed "
                    "then, so one micro-batch is held at a time")
        labelled_before += _count(window[i][1]) > 0
    if len(run.pulls) != len(window):
        return f"{len(run.pulls)} of {len(window)} micro-batches were read", "read the whole stream"
    return None


def _streamed(step, window, as_stream: bool = True):
    """A call for _run: step(model, optimizer, the window as a watched stream (or a list), **options)."""
    return lambda model, optimizer, options, run: [
        step(model, optimizer, _Watched(window, run) if as_stream else list(window), **options)]


def _library(model, optimizer, micro_batches, **options) -> float:
    return training_step(model, optimizer, micro_batches, lookahead=False, **options).loss


PLAIN = Options(None, False, False, False)


def stream_reads_one_micro_batch_at_a_time(impl):
    window = _combination_window("unequal", seed=900) + _combination_window("equal", seed=910)
    run = _run(_streamed(impl.streaming_accumulation_step, window), PLAIN, 0.0)
    problem = _reading_problem(run, window)
    if problem:
        return failed(*problem)
    return passed(f"{len(window)} micro-batches (one without a labelled position), each read after the previous "
                  "one's forward and backward")


def stream_gradient_equals_full_batch(impl):
    window = _combination_window("unequal", seed=920)
    ref, _ = _full_batch(_model(), window)
    run = _run(_streamed(impl.streaming_accumulation_step, window), PLAIN, 0.0)
    counts = [_count(y) for _, y in window]
    if len(run.grads) != 1:
        return failed(f"{len(run.grads)} optimizer steps for one window of {len(window)}",
                      "call optimizer.step() once, after the last micro-batch")
    got = run.grads[0]
    if _close(got, ref):
        return passed(f"max |diff| {_diff(got, ref):.1e} vs {REFERENCE} (token counts {counts})")
    seen = [sum(counts[: i + 1]) for i in range(len(counts))]
    extra = {
        "divided by the number of micro-batches, not by the window's token count":
            _weighted(_model(), window, lambda i, y: 1 / len(window)),
        "each micro-batch divided by the tokens read so far (a running count): the early ones weigh more":
            _weighted(_model(), window, lambda i, y: 1 / max(seen[i], 1)),
        f"the summed gradients were never divided by the window's {sum(counts)} labelled tokens":
            _weighted(_model(), window, lambda i, y: 1.0),
    }
    return failed(f"step gradient max |diff| {_diff(got, ref):.2e} vs {REFERENCE} (token counts {counts})",
                  _name_gradient_mistake(_model(), window, got, ref, extra=extra))


def stream_returns_window_token_mean_loss(impl):
    window = _combination_window("unequal", seed=930)
    _, want = _full_batch(_model(), window)
    returned = _run(_streamed(impl.streaming_accumulation_step, window), PLAIN, 0.0).losses[0]
    try:
        value = float(returned)
    except (TypeError, ValueError):
        return failed(f"returned {returned!r:.60}, not a number", "return the loss as a Python float")
    if math.isclose(value, want, rel_tol=1e-5):
        return passed(f"{value:.6g} == {want:.6g} (relative tolerance 1e-5)")
    counts = [_count(y) for _, y in window]
    summed = math.isclose(value, want * sum(counts), rel_tol=1e-5)
    return failed(f"returned {value:.6g}; the window's token-mean loss is {want:.6g} (token counts {counts})",
                  "that is the summed loss: divide it by the window's token count too" if summed else
                  "return the token-mean loss of the whole window: the summed losses / the labelled tokens counted")


def stream_options_together(impl):
    window = _combination_window("unequal", seed=940)
    max_norm = _max_norm([window])
    for case in STREAM_CASES:
        where = f"{case}, the micro-batches as {'a generator' if case.stream else 'a list'}"
        want = _run(_streamed(_library, window, case.stream), case, max_norm)
        try:
            got = _run(_streamed(impl.streaming_accumulation_step, window, case.stream), case, max_norm)
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
            return failed(f"{where}: raised {type(error).__name__}: {str(error)[:100]}",
                          "every combination of the options must run, on a generator or a list")
        problem = (_reading_problem(got, window) if case.stream else None) or _run_problem(
            case, got, want, [window], max_norm, lambda other: _run(_streamed(_library, window, other.stream), other,
                                                                    max_norm))
        if problem:
            return failed(f"{where}: {problem[0]}", problem[1])
    return passed(f"{len(STREAM_CASES)} cases, every pair of (fp32 / bf16 / fp16 autocast, GradScaler, clipping, "
                  "scheduler, a generator or a list): equal to the library's step, one micro-batch read at a time")


def stream_bad_input_clear_errors_no_step(impl):
    unlabelled = [(x, torch.full_like(y, IGNORE)) for x, y in _combination_window("equal", seed=950)]
    for what, window in (("an empty stream", []), ("a stream with no labelled position (all labels -100)", unlabelled)):
        run = Run()
        model = _instrumented(run)
        optimizer = _Recorder(model, lr=0.1)
        try:
            impl.streaming_accumulation_step(model, optimizer, iter(window))
        except ValueError:
            left = [p for p in model.parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)]
            if optimizer.seen_grads or left:
                return failed(f"{what}: ValueError, but " + ("after an optimizer step" if optimizer.seen_grads else
                                                             "with gradients left in .grad"),
                              "check the count before the optimizer step, and zero the gradients before raising")
            continue
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
            return failed(f"{what}: raised {type(error).__name__}: {str(error)[:80]}",
                          f"raise ValueError with a clear message for {what}")
        nan = any(not bool(torch.isfinite(g).all()) for g in optimizer.seen_grads)
        return failed(f"{what}: no error" + (" and the step used NaN gradients (0/0)" if nan else ""),
                      "the count is known only at the end: if it is 0, the token mean is 0/0; raise ValueError "
                      "instead of stepping (and leave no gradient behind)")
    return passed("ValueError for an empty stream and for one with no labelled position; no step, no gradient left")

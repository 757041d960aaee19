"""Helpers of the accumulation grader (efftrain_lib/grading/accumulation.py): reference implementations, the
small models the checks run, and the diagnoses that name a learner's likely mistake. The checks themselves,
in the order the report shows them, are in the grader module."""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grading import failed
from efftrain_lib.training import training_step

ATOL, RTOL = 1e-6, 1e-5


VOCAB, DIM, SEQ = 11, 8, 6


IGNORE = -100


REFERENCE = "a full-batch step"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(VOCAB, DIM), nn.Linear(DIM, DIM), nn.Tanh(), nn.Linear(DIM, VOCAB))


def _micro(seed: int, lengths=(SEQ, SEQ)):
    """One micro-batch: len(lengths) sequences of SEQ token ids; labels -100 after each length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(lengths), SEQ), generator=g)
    labels = torch.randint(0, VOCAB, (len(lengths), SEQ), generator=g)
    for row, length in enumerate(lengths):
        labels[row, length:] = IGNORE
    return ids, labels


def _equal_window(k=4, seed=0):
    return [_micro(seed + i) for i in range(k)]


# Token counts 2, 12, 5, 10: unequal, so the mean of micro-batch means is visibly wrong.
UNEQUAL_LENGTHS = [(1, 1), (6, 6), (2, 3), (6, 4)]


def _unequal_window(seed=0):
    return [_micro(seed + i, lengths) for i, lengths in enumerate(UNEQUAL_LENGTHS)]


class _Recorder(torch.optim.SGD):
    """SGD that records the gradient (flattened, in model order) and the lr of every step."""

    def __init__(self, model: nn.Module, lr: float = 0.0, momentum: float = 0.0):
        self._model_params = list(model.parameters())
        super().__init__(self._model_params, lr=lr, momentum=momentum)
        self.seen_grads: list[torch.Tensor] = []
        self.seen_lrs: list[float] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.seen_grads.append(_flat_grads(self._model_params))
        self.seen_lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


class _SpyScaler(torch.amp.GradScaler):
    """A real CPU GradScaler that logs its calls. An update() with nothing to update (no step since
    the last one) is logged and ignored instead of raising, so the check can name the mistake."""

    def __init__(self, **kwargs):
        super().__init__("cpu", **kwargs)
        self.calls: list[str] = []
        # Create the scale now (GradScaler does it on the first scale() call), so that code which
        # never calls scale() reaches step() and shows what it computed instead of an AssertionError.
        self._lazy_init_scale_growth_tracker(torch.device("cpu"))

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        if not any(state["found_inf_per_device"] for state in self._per_optimizer_states.values()):
            self.calls.append("update-without-step")  # a real GradScaler raises an AssertionError here
            return None
        return super().update(new_scale)


def _flat_grads(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).clone()
                      for p in params])


def _ce_sum(logits, labels):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def _count(labels) -> int:
    return int((labels != IGNORE).sum())


def _full_batch(model, window, clip=None):
    """The reference: (flat gradient, token-mean loss) of one step on the concatenated window."""
    m = copy.deepcopy(model)
    inputs = torch.cat([x for x, _ in window])
    labels = torch.cat([y for _, y in window])
    loss = F.cross_entropy(m(inputs).reshape(-1, VOCAB), labels.reshape(-1), ignore_index=IGNORE)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
    return _flat_grads(m.parameters()), loss.item()


def _weighted(model, window, weight):
    """Gradient of sum_i weight(i, labels_i) * CE_sum(micro-batch i): the classic normalizations."""
    m = copy.deepcopy(model)
    total = sum(_ce_sum(m(x), y) * weight(i, y) for i, (x, y) in enumerate(window))
    total.backward()
    return _flat_grads(m.parameters())


def _close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    return got.shape == ref.shape and bool(torch.isfinite(got).all()) and \
        (got - ref).abs().max().item() <= ATOL + RTOL * ref.abs().max().item()


def _diff(got, ref) -> float:
    return (got - ref).abs().max().item()


def _ratio(got, ref):
    """c if got == c * ref (to 1e-4 relative), else None."""
    c = (torch.dot(got, ref) / torch.dot(ref, ref)).item()
    if math.isfinite(c) and (got - c * ref).abs().max().item() <= 1e-4 * max(ref.abs().max().item() * abs(c), 1e-12):
        return c
    return None


def _clipped(vector: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """What clip_grad_norm_ does to a gradient (as one vector)."""
    if max_norm is None:
        return vector
    return vector * min(1.0, max_norm / (vector.norm().item() + 1e-6))


def _candidates(model, window, k=None):
    """Gradients the classic normalization mistakes give on this window, by the mistake's name."""
    k = k or len(window)
    counts = [_count(y) for _, y in window]
    n = sum(counts)
    numel = sum(y.numel() for _, y in window)
    last = len(window) - 1
    return {
        "mean of per-micro-batch means (the 2024 normalization bug): divide the summed loss by the token count "
        "of the whole window":
            _weighted(model, window, lambda i, y: 1 / (k * max(counts[i], 1))),
        "loss not divided: the micro-batch means are summed (k times the mean gradient); divide by the window's "
        "token count":
            _weighted(model, window, lambda i, y: 1 / max(counts[i], 1)),
        "zero_grad inside the window: only the last micro-batch's gradient survives; zero the gradients once "
        "per window, not before every backward":
            _weighted(model, window, lambda i, y: (1 / n) if i == last else 0.0),
        "zero_grad inside the window: only the last micro-batch's gradient survives (and it is a mean over that "
        "micro-batch / k); zero the gradients once per window":
            _weighted(model, window, lambda i, y: (1 / (k * max(counts[i], 1))) if i == last else 0.0),
        f"counted the ignored (-100) positions: the loss is divided by all {numel} positions instead of the "
        f"{n} labelled ones":
            _weighted(model, window, lambda i, y: 1 / numel),
    }


def _name_gradient_mistake(model, window, got, ref, k=None, extra=None, clip=None) -> str:
    """The hint for a wrong gradient: the mistake whose gradient matches, else what the ratio says.
    clip: the max_grad_norm the step clipped to (each mistake's gradient is clipped the same way)."""
    if not bool(torch.isfinite(got).all()):
        return "the gradient has NaN/inf: is the loss divided by a count of zero?"
    if got.abs().max().item() == 0.0:
        return "the optimizer stepped with a zero gradient: call backward() on every micro-batch's loss, " \
               "and zero the gradients before the window, not between backward and step"
    candidates = dict(extra or {})
    candidates.update(_candidates(model, window, k))
    matches = [name for name, grad in candidates.items()
               if not _close(ref, _clipped(grad, clip)) and _close(got, _clipped(grad, clip))]
    if matches:  # clipping can make two mistakes look alike (same direction, clipped to one norm)
        return " -- or: ".join(matches)
    c = _ratio(got, ref)
    if c is not None:
        k = k or len(window)
        if math.isclose(c, k, rel_tol=1e-3):
            return f"the gradient is k = {k} times too large: the loss is not divided"
        if math.isclose(c, 1 / k, rel_tol=1e-3):
            return f"the gradient is 1/k = 1/{k} of the right one: divided by k twice?"
        return f"the gradient is {c:.4g} x the full-batch gradient: normalize by the token count of the whole window"
    return "the step's gradient must be the gradient of the token-mean cross-entropy over every labelled " \
           "position of the window: sum-reduce each micro-batch's loss and divide by the window's token count"


def _steps_hint(steps: int, expected: int) -> str:
    if steps > expected:
        return "the optimizer stepped per micro-batch: call optimizer.step() once per window, after its last backward"
    if steps < expected:
        return "call optimizer.step() once per window, after its last backward (the last, partial window too)"
    return ""


def _call_step(impl, model, optimizer, window, **kwargs):
    return impl.accumulation_step(model, optimizer, window, **kwargs)


def _gradient_check(impl, window, **kwargs):
    model = _model()
    ref, ref_loss = _full_batch(model, window)
    optimizer = _Recorder(model)
    _call_step(impl, model, optimizer, window, **kwargs)
    steps = len(optimizer.seen_grads)
    if steps != 1:
        return None, failed(f"{steps} optimizer steps for one window of {len(window)} micro-batches; expected 1",
                            "the optimizer stepped per micro-batch: call optimizer.step() once, after the "
                            "window's last backward" if steps > 1 else
                            "call optimizer.step() once, after the window's last backward")
    got = optimizer.seen_grads[0]
    if not _close(got, ref):
        return None, failed(f"step gradient max |diff| {_diff(got, ref):.2e} vs {REFERENCE}",
                            _name_gradient_mistake(model, window, got, ref))
    return _diff(got, ref), None


def _clip_per_micro_batch(model, window, max_norm):
    """What clipping inside the loop gives: the running sum clipped after every micro-batch."""
    m = copy.deepcopy(model)
    n = sum(_count(y) for _, y in window)
    for x, y in window:
        (_ce_sum(m(x), y) / n).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm)
    return _flat_grads(m.parameters())


SCALE = 2.0**8


def _scaler_run(impl, window, max_norm=None):
    model = _model()
    optimizer = _Recorder(model)
    scaler = _SpyScaler(init_scale=SCALE, growth_interval=1)
    _call_step(impl, model, optimizer, window, scaler=scaler, max_grad_norm=max_norm)
    return model, optimizer, scaler


def _scaler_order_problem(calls, k, windows=1):
    """What is wrong with a GradScaler's calls over k micro-batches in `windows` windows (None: nothing)."""
    if "update-without-step" in calls or calls.count("update") > windows:
        return ("scaler.update() per micro-batch (a real GradScaler raises 'No inf checks were recorded'): "
                "update the scale once per window, after scaler.step")
    if calls.count("scale") != k:
        return (f"scaler.scale() called {calls.count('scale')} times for {k} micro-batches: the loss is not scaled; "
                "scale every micro-batch's loss: scaler.scale(loss).backward()")
    if calls.count("step") != windows:
        return f"scaler.step() called {calls.count('step')} times: step through the scaler once per window"
    if calls.count("update") != windows:
        return "scaler.update() never called: update the scale once per window, after scaler.step"
    if windows == 1 and calls.index("step") < max(i for i, c in enumerate(calls) if c == "scale"):
        return "scaler.step before the last micro-batch's backward: step once, at the end of the window"
    return None


def _scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))


def _accumulator(impl, model, optimizer, k, **kwargs):
    return impl.GradientAccumulator(model, optimizer, k, **kwargs)


def _equal_batches(n=10, seed=100):
    return [_micro(seed + i) for i in range(n)]


def _unequal_batches(seed=200):
    lengths = [(1, 2), (6, 6), (3, 0), (6, 5), (2, 2), (4, 6), (1, 1)]  # 7 micro-batches, k = 3: 3, 3, 1
    return [_micro(seed + i, ls) for i, ls in enumerate(lengths)]


def _windows(batches, k):
    return [batches[i:i + k] for i in range(0, len(batches), k)]


# ----------------------------------------------------------------------------- options together --
AUTOCAST_NAMES = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}
# Token counts 2, 12, 0, 10: unequal, and one micro-batch with no labelled position inside a labelled window.
WINDOWS = {"equal": "4 micro-batches of 12 tokens", "unequal": "token counts 2, 12, 0, 10",
           "single": "one micro-batch"}


def _combination_window(kind: str, seed: int):
    if kind == "equal":
        return _equal_window(seed=seed)
    if kind == "single":
        return [_micro(seed)]
    return [_micro(seed + i, lengths) for i, lengths in enumerate([(1, 1), (6, 6), (0, 0), (6, 4)])]


@dataclass(frozen=True)
class Options:
    """One combination of the step's options (and, for Exercise 4.1, the kind of window)."""

    dtype: torch.dtype | None
    scaler: bool  # a torch.amp.GradScaler("cpu") that logs its calls, or None
    clip: bool  # max_grad_norm a fifth of the gradient's norm, or None
    scheduler: bool  # LambdaLR(lr / (step + 1)), or None
    window: str = "unequal"  # WINDOWS (Exercise 4.1); 4.2 and 4.3 use their own batches
    stream: bool = True  # Exercise 4.3: the micro-batches as a generator (True) or as a list

    def __str__(self) -> str:
        return " + ".join([AUTOCAST_NAMES[self.dtype], "GradScaler" if self.scaler else "no scaler",
                           "max_grad_norm" if self.clip else "no clipping", "scheduler" if self.scheduler else
                           "no scheduler"])

    def others(self, option: str) -> str:
        """The other options, in words: where `option` was dropped."""
        parts = {"dtype": AUTOCAST_NAMES[self.dtype], "scaler": "a GradScaler" if self.scaler else "no scaler",
                 "clip": "max_grad_norm" if self.clip else "no clipping",
                 "scheduler": "a scheduler" if self.scheduler else "no scheduler"}
        return " + ".join(v for k, v in parts.items() if k != option)


# Every pair of (autocast dtype, GradScaler, clipping, scheduler, window) in 9 cases for Exercise 4.1, of the
# four options in 6 for Exercise 4.2, of the four and a generator or a list in 7 for Exercise 4.3; fp16 always
# with a scaler. tests/grading/test_accumulation_graders.py proves every pair covered.
BF16, FP16 = torch.bfloat16, torch.float16
# fp32 cases first: there a wrong gradient can be compared with the classic mistakes' and named.
STEP_CASES = [
    Options(None, False, True, False, "unequal"), Options(None, True, False, True, "equal"),
    Options(None, False, True, False, "single"), Options(BF16, True, False, True, "unequal"),
    Options(BF16, False, False, False, "single"), Options(BF16, False, True, True, "equal"),
    Options(FP16, True, False, False, "equal"), Options(FP16, True, False, True, "single"),
    Options(FP16, True, True, False, "unequal"),
]
ACCUMULATOR_CASES = [
    Options(None, False, False, True), Options(None, True, True, False), Options(BF16, True, False, True),
    Options(BF16, False, True, False), Options(FP16, True, False, False), Options(FP16, True, True, True),
]
STREAM_CASES = [
    Options(None, False, False, False), Options(None, True, True, True, stream=False),
    Options(BF16, True, True, False, stream=False), Options(BF16, False, False, False, stream=False),
    Options(BF16, False, True, True), Options(FP16, True, False, True, stream=False), Options(FP16, True, True, False),
]


def _autocast_now():
    """The autocast dtype in force on the CPU, None outside autocast (fp32)."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


@dataclass
class Run:
    """What a step (or a run of windows) did, as the grader saw it."""

    losses: list = field(default_factory=list)  # returned, one per window
    grads: list = field(default_factory=list)  # the gradient each optimizer step applied
    lrs: list = field(default_factory=list)  # the lr each optimizer step used
    calls: list = field(default_factory=list)  # the GradScaler's calls
    scale: float | None = None
    autocast: list = field(default_factory=list)  # the autocast dtype of every forward
    backwards: int = 0  # backward passes through the model (a hook on the embedding's weight)
    pulls: list = field(default_factory=list)  # a watched stream: (forwards, backwards) at each micro-batch read


def _instrumented(run: Run) -> nn.Module:
    """The grader's model, recording the autocast dtype of every forward and counting backward passes."""
    model = _model()
    model.register_forward_pre_hook(lambda module, args: run.autocast.append(_autocast_now()))
    model[0].weight.register_hook(lambda grad: setattr(run, "backwards", run.backwards + 1))
    return model


def _options(case: Options, optimizer, max_norm: float) -> dict:
    """The options the case turns on (only those: code without an option fails only the cases that use it)."""
    options = {}
    if case.scaler:
        options["scaler"] = _SpyScaler(init_scale=SCALE, growth_interval=1)
    if case.clip:
        options["max_grad_norm"] = max_norm
    if case.scheduler:
        options["scheduler"] = _scheduler(optimizer)
    if case.dtype is not None:
        options["autocast_dtype"] = case.dtype
    return options


def _run(call, case: Options, max_norm: float) -> Run:
    """call(model, optimizer, options, run) -> the returned losses; what the optimizer and the scaler saw."""
    run = Run()
    model = _instrumented(run)
    optimizer = _Recorder(model, lr=0.1)
    options = _options(case, optimizer, max_norm)
    run.losses = list(call(model, optimizer, options, run))
    run.grads, run.lrs = optimizer.seen_grads, optimizer.seen_lrs
    if case.scaler:
        run.calls, run.scale = options["scaler"].calls, options["scaler"].get_scale()
    return run


def _library_step(model, optimizer, window, **options) -> float:
    """The reference: the library's one training step."""
    return training_step(model, optimizer, window, **options).loss


def _max_norm(windows) -> float:
    """A fifth of the smallest full-batch gradient norm over the windows: clipping binds in every window."""
    return min(_full_batch(_model(), w)[0].norm().item() for w in windows) / 5


def _close_for(case: Options, got: torch.Tensor, ref: torch.Tensor) -> bool:
    """_close in fp32; under 16-bit autocast the same sums round differently (a bf16 matmul keeps 8 bits), so
    within 1e-6 + 1e-2 x max |ref|: a dropped or misplaced option is off by far more."""
    if case.dtype is None:
        return _close(got, ref)
    return got.shape == ref.shape and bool(torch.isfinite(got).all()) and \
        _diff(got, ref) <= 1e-6 + 1e-2 * ref.abs().max().item()


def _run_problem(case: Options, got: Run, want: Run, windows, max_norm: float, rerun) -> tuple[str, str] | None:
    """(what differs from the library's step, a hint naming the option dropped), or None when equal.
    rerun(case) runs the library's reference again with other options (to name a dropped one)."""
    micro_batches = sum(len(w) for w in windows)
    if len(got.autocast) != len(want.autocast):
        return (f"{len(got.autocast)} forwards for {micro_batches} micro-batches in {len(windows)} window(s)",
                "one forward per micro-batch, in every window (the final partial one too)")
    if got.autocast != want.autocast:
        return _autocast_problem(case, got, want, windows)
    # unscale_ is compared through the gradient (a clip skipped or made before unscale_ is named there)
    calls, want_calls = ([c for c in run.calls if c != "unscale_"] for run in (got, want))
    if calls != want_calls:
        return (f"GradScaler calls {', '.join(got.calls)}; the library's step: {', '.join(want.calls)}",
                _scaler_order_problem(got.calls, micro_batches, len(windows)) or
                f"scale every micro-batch, unscale_ (to clip), step and update once per window, with "
                f"{case.others('scaler')}")
    if len(got.grads) != len(want.grads):
        return (f"{len(got.grads)} optimizer steps for {len(windows)} window(s)",
                _steps_hint(len(got.grads), len(want.grads)))
    if got.lrs != want.lrs:
        return (f"learning rates used {[round(v, 4) for v in got.lrs]}, the library's {[round(v, 4) for v in want.lrs]}",
                f"one scheduler.step() per window, after the optimizer step (with {case.others('scheduler')})")
    for i, (g, w) in enumerate(zip(got.grads, want.grads)):
        if not _close_for(case, g, w):
            where = f"window {i + 1}: " if len(windows) > 1 else ""
            return (f"{where}step gradient max |diff| {_diff(g, w):.2e} vs the library's step (norm {g.norm():.4g} "
                    f"vs {w.norm():.4g})", _gradient_option_hint(case, i, got, want, windows, max_norm, rerun))
    losses_ok = len(got.losses) == len(want.losses) and all(
        math.isclose(float(a), b, rel_tol=1e-5 if case.dtype is None else 1e-2) for a, b in zip(got.losses, want.losses))
    if not losses_ok:
        return (f"returned {[round(float(v), 5) for v in got.losses]}, the library's {[round(v, 5) for v in want.losses]}",
                "return each window's token-mean loss (the big batch's loss), whatever the options")
    if got.scale != want.scale:
        return f"scale {got.scale} after the run, the library's {want.scale}", "scaler.update() once per window"
    return None


def _gradient_option_hint(case: Options, i: int, got: Run, want: Run, windows, max_norm: float, rerun) -> str:
    g, w = got.grads[i], want.grads[i]
    if case.clip:
        unclipped = rerun(replace(case, clip=False)).grads
        if len(unclipped) > i and _close_for(case, g, unclipped[i]):
            return f"max_grad_norm dropped with {case.others('clip')}: clip once per window, whatever the options"
        c = _ratio(g, w)
        if c is not None and math.isclose(c, 1 / SCALE, rel_tol=1e-3):
            return "clipped before unscale_: call scaler.unscale_(optimizer) before clip_grad_norm_"
        if c is not None and c < 0.5:
            return (f"clipped too early, with {case.others('clip')}: the clip saw a gradient that was not yet the "
                    "window's mean (still summed over tokens, or still scaled); divide by the token count and "
                    "unscale_ first, then clip_grad_norm_")
    if i > 0 and not case.clip and _close_for(case, g, w + want.grads[i - 1]):
        return "gradients leak from one window into the next: zero_grad is missing between windows"
    if case.dtype is None and i == 0:  # the first window starts from the reference's weights
        clip = max_norm if case.clip else None
        if clip is not None and not case.scaler and _close(g, _clip_per_micro_batch(_model(), windows[0], clip)):
            return "clipped per micro-batch: clip once per window, after the last backward"
        return _name_gradient_mistake(_model(), windows[0], g, _full_batch(_model(), windows[0], clip=clip)[0],
                                      clip=clip)
    return f"the window's gradient must not change with the options: normalize by the window's token count " \
           f"with {case}"
def _autocast_problem(case: Options, got: Run, want: Run, windows) -> tuple[str, str]:
    pairs = itertools.zip_longest(got.autocast, want.autocast, fillvalue="none")
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), 0)
    sizes = [len(w) for w in windows]
    window = next(i for i, end in enumerate(itertools.accumulate(sizes)) if first < end) if first < sum(sizes) else -1
    seen = sorted({AUTOCAST_NAMES.get(d, str(d)) for d in got.autocast})
    where = " in the final partial window" if len(windows) > 1 and window == len(windows) - 1 else ""
    partial = f" (the final partial window's in {AUTOCAST_NAMES.get(got.autocast[first], '?')})" if where else ""
    return (f"the forwards ran in {', '.join(seen)}, not all in {AUTOCAST_NAMES[case.dtype]}{partial}",
            f"autocast_dtype dropped{where or ''} with {case.others('dtype')}: run every forward under "
            "torch.autocast(device type, dtype=autocast_dtype), and pass every option to every window")

"""Helpers of the accumulation grader (efftrain_lib/grading/accumulation.py): reference implementations, the
small models the checks run, and the diagnoses that name a learner's likely mistake. The checks themselves,
in the order the report shows them, are in the grader module."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grading import failed

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


def _scaler_order_problem(calls, k):
    if "update-without-step" in calls or calls.count("update") > 1:
        return ("scaler.update() per micro-batch (a real GradScaler raises 'No inf checks were recorded'): "
                "update the scale once per window, after scaler.step")
    if calls.count("scale") != k:
        return (f"scaler.scale() called {calls.count('scale')} times for {k} micro-batches: the loss is not scaled; "
                "scale every micro-batch's loss: scaler.scale(loss).backward()")
    if calls.count("step") != 1:
        return f"scaler.step() called {calls.count('step')} times: step through the scaler once per window"
    if calls.count("update") != 1:
        return "scaler.update() never called: update the scale once per window, after scaler.step"
    if calls.index("step") < max(i for i, c in enumerate(calls) if c == "scale"):
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

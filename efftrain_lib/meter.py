"""The memory meter every chapter uses: where the bytes of one training step go.

Two sources, and every figure names the one it came from:

* CUDA: the caching allocator's own counters, `torch.cuda.memory_allocated` per sample and
  `torch.cuda.max_memory_allocated` for the step's peak (reset when the step starts). The
  categories are filled in by the accounting below; what the allocator holds beyond them
  (temporaries, inputs, logits, workspaces) is reported as `other`.
* CPU: exact accounting of the tensors that make up training memory: parameters and buffers,
  `.grad`, `optimizer.state`, and the tensors autograd saves for backward (seen through
  `torch.autograd.graph.saved_tensors_hooks`, deduplicated by storage, parameters excluded: the
  `SavedTensorCounter` of efftrain_lib.saved_tensors).
  Temporaries that live inside one operation are not tensors anyone holds, so accounting does
  not see them; `profiler_peak_bytes` gives the CPU allocator's own figure when that matters.

Typical use (the one step, `training.training_step`, does this for you when given `meter=`)::

    meter = MemoryMeter()
    with meter.step(model, optimizer):
        loss = loss_fn(model(x), y); meter.mark("forward")
        loss.backward();            meter.mark("backward")
        optimizer.step();           meter.mark("optimizer step")
        optimizer.zero_grad(set_to_none=True)
    print(meter.records[-1].peak)           # MemoryBreakdown in MiB, with its source
    events = meter.timeline()               # forward builds up, backward releases
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn as nn

from .devices import model_device
from .saved_tensors import SavedTensorCounter, as_device, check_module, on_device, storage_key, unique_bytes
from .training import training_step

# Kineto prints its own INFO lines to stderr the first time the profiler starts; level 6
# silences it. It is read when the profiler first initialises, so set it before anyone profiles.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

MIB = 1024**2

#: The categories of a breakdown, in the order tables and stacked plots show them.
CATEGORIES = ("weights", "gradients", "optimizer_state", "activations", "cast_weights", "other")

SOURCE_CPU = "CPU accounting: parameters+buffers, .grad, optimizer.state, saved_tensors_hooks"
SOURCE_CUDA = (
    "CUDA allocator: torch.cuda.memory_allocated (categories by accounting, the rest in 'other')"
)
SOURCE_CUDA_PEAK = (
    "CUDA allocator: torch.cuda.max_memory_allocated (categories by accounting at the largest "
    "sample, the rest in 'other')"
)
SOURCE_PROFILER = "CPU allocator: torch.profiler (profile_memory=True), bytes above the level at entry"


# ----------------------------------------------------------------------------------------------
# The breakdown
# ----------------------------------------------------------------------------------------------


@dataclass
class MemoryBreakdown:
    """Bytes of training memory by category, and where the figures came from.

    weights          parameters and buffers (the model itself)
    gradients        the `.grad` tensors
    optimizer_state  every tensor in `optimizer.state` (Adam: m, v and the `step` scalars)
    activations      tensors saved for backward, parameters and cast weights excluded
    cast_weights     low-precision copies of the weights that autocast makes and autograd saves
    other            allocator bytes no category explains (CUDA only: temporaries, inputs, logits)
    """

    weights: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations: int = 0
    cast_weights: int = 0
    other: int = 0
    source: str = SOURCE_CPU

    def __post_init__(self):
        for name in CATEGORIES:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"MemoryBreakdown.{name} must be a non-negative int of bytes, got {value!r}")

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in CATEGORIES)

    def as_dict(self) -> dict:
        """Bytes per category plus `total` and `source` (plain types, easy to tabulate or JSON)."""
        out = {name: getattr(self, name) for name in CATEGORIES}
        out["total"] = self.total
        out["source"] = self.source
        return out

    def to_table(self, title: str | None = None) -> str:
        """A small fixed-width table in MiB, with the source on the last line."""
        width = max(len(name) for name in CATEGORIES + ("total",))
        lines = [title] if title else []
        for name in CATEGORIES:
            value = getattr(self, name)
            if value or name != "other":  # 'other' only appears where an allocator reports it
                lines.append(f"{name:<{width}}  {value / MIB:10.3f} MiB")
        lines.append(f"{'total':<{width}}  {self.total / MIB:10.3f} MiB")
        lines.append(f"source: {self.source}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()


# ----------------------------------------------------------------------------------------------
# Static accounting helpers
# ----------------------------------------------------------------------------------------------


def parameter_bytes(model: nn.Module, trainable_only: bool = False, device=None) -> int:
    """Bytes of the model's parameters (only those with requires_grad if `trainable_only`)."""
    check_module(model)
    params = (p for p in model.parameters() if p.requires_grad or not trainable_only)
    return unique_bytes(params, as_device(device))


def buffer_bytes(model: nn.Module, device=None) -> int:
    """Bytes of the model's buffers (running statistics, cached tables): resident like weights."""
    check_module(model)
    return unique_bytes(model.buffers(), as_device(device))


def gradient_bytes(model: nn.Module, device=None) -> int:
    """Bytes of the `.grad` tensors currently attached to the model's parameters."""
    check_module(model)
    return unique_bytes((p.grad for p in model.parameters()), as_device(device))


def _optimizer_tensors(optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        values = state.values() if isinstance(state, dict) else [state]
        for value in values:
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, torch.Tensor))


def optimizer_state_bytes(optimizer, device=None) -> int:
    """Bytes of every tensor in `optimizer.state`, deduplicated by storage.

    How `step` counts: since torch 1.12 Adam/AdamW keep `step` as a tensor per parameter tensor
    (a 0-dim fp32 on CPU unless capturable/fused). It is a real tensor in the state, so it is
    counted: Adam = 8 bytes per trainable element (m and v in fp32) + 4 bytes per parameter tensor.
    SGD without momentum has no state; with momentum, 4 bytes per element.
    """
    if not hasattr(optimizer, "state") or not hasattr(optimizer, "param_groups"):
        raise ValueError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return unique_bytes(_optimizer_tensors(optimizer), as_device(device))





# ----------------------------------------------------------------------------------------------
# Step records and the meter
# ----------------------------------------------------------------------------------------------


class TimelineEvent(NamedTuple):
    """One point of the within-step timeline: (event_index, phase, total_bytes, breakdown)."""

    event_index: int
    phase: str
    total_bytes: int
    breakdown: MemoryBreakdown


# A raw event, kept as a tuple so that recording one costs next to nothing:
# [phase, weights, gradients, optimizer_state, activations, cast_weights, allocated or None]
_RawEvent = list

END_PHASE = "end"


@dataclass
class StepRecord:
    """What the meter saw during one `meter.step(...)`.

    samples: (label, breakdown) for every `mark(label)`, plus "start" and "end".
    peak:    the largest breakdown of the step (CPU: the largest accounted event; CUDA: the
             allocator's max_memory_allocated, categories from the largest sample).
    activations_by_module: activation bytes by the innermost module that saved them.
    events:  the raw timeline (internal lists); read it through `timeline()`.
    """

    index: int
    source: str
    samples: list[tuple[str, MemoryBreakdown]] = field(default_factory=list)
    peak: MemoryBreakdown = field(default_factory=MemoryBreakdown)
    events: list[_RawEvent] = field(default_factory=list, repr=False)
    activations_by_module: dict[str, int] = field(default_factory=dict)
    saved_activation_bytes: int = 0
    saved_cast_weight_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None  # set when the step raised (the record then ends where it stopped)

    @property
    def peak_bytes(self) -> int:
        return self.peak.total

    def sample(self, label: str) -> MemoryBreakdown:
        """The breakdown recorded at `mark(label)` (the last one if marked twice)."""
        for name, breakdown in reversed(self.samples):
            if name == label:
                return breakdown
        raise ValueError(f"no sample labelled {label!r}; labels: {[name for name, _ in self.samples]}")

    def timeline(self) -> list[TimelineEvent]:
        """Every recorded event as (event_index, phase, total_bytes, breakdown)."""
        out = []
        for index, event in enumerate(self.events):
            breakdown = _breakdown(event, self.source)
            out.append(TimelineEvent(index, event[0], breakdown.total, breakdown))
        return out


def _breakdown(event: _RawEvent, source: str) -> MemoryBreakdown:
    _, weights, grads, optim, acts, cast, allocated = event
    other = 0 if allocated is None else max(0, allocated - (weights + grads + optim + acts + cast))
    return MemoryBreakdown(weights, grads, optim, acts, cast, other, source)


def _event_total(event: _RawEvent) -> int:
    accounted = event[1] + event[2] + event[3] + event[4] + event[5]
    return accounted if event[6] is None else max(accounted, event[6])


class _ActiveStep:
    """The running totals of one step in progress (the meter keeps one at a time)."""

    def __init__(self, record: StepRecord, model, optimizer, device: torch.device):
        self.record = record
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.cuda = device.type == "cuda"
        filter_device = device if self.cuda else None  # on CPU count every tensor
        self.filter_device = filter_device
        # One traversal per step: walking the module tree at every sample would cost more than
        # the rest of the meter together.
        self.params = list(model.parameters())
        self.weights = unique_bytes(self.params, filter_device) + unique_bytes(model.buffers(), filter_device)
        self.grad_keys: dict[int, int] = {}
        self.gradients = 0
        self.optimizer_state = 0
        self.pending_from = 0  # index of the first event still waiting for its phase
        self.peak_event: _RawEvent | None = None
        self.peak_total = -1
        self.counter: SavedTensorCounter | None = None
        self.handles: list = []

    def resync(self) -> None:
        """Recount gradients and optimizer state exactly (cheap: one pass over the parameters)."""
        self.grad_keys = {}
        for param in self.params:
            if param.grad is not None and on_device(param.grad, self.filter_device):
                key, nbytes = storage_key(param.grad)
                self.grad_keys[key] = nbytes
        self.gradients = sum(self.grad_keys.values())
        self.optimizer_state = (
            0 if self.optimizer is None else optimizer_state_bytes(self.optimizer, device=self.filter_device)
        )

    def event(self, phase: str | None = None) -> _RawEvent:
        counter = self.counter
        acts = counter.activation_bytes if counter is not None else 0
        cast = counter.cast_weight_bytes if counter is not None else 0
        allocated = torch.cuda.memory_allocated(self.device) if self.cuda else None
        event = [phase, self.weights, self.gradients, self.optimizer_state, acts, cast, allocated]
        self.record.events.append(event)
        total = _event_total(event)
        if total > self.peak_total:
            self.peak_event, self.peak_total = event, total
        return event

    def label_pending(self, phase: str) -> None:
        """Events since the last mark happened during the phase that this mark ends."""
        events = self.record.events
        for event in events[self.pending_from :]:
            event[0] = phase
        self.pending_from = len(events)

    def on_grad(self, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None or not on_device(grad, self.filter_device):
            return
        key, nbytes = storage_key(grad)
        if key not in self.grad_keys:  # accumulating into an existing .grad allocates nothing
            self.grad_keys[key] = nbytes
            self.gradients += nbytes
            self.event()


class MemoryMeter:
    """Records the memory of training steps: samples at marks, a within-step timeline, the peak.

    device: "cpu" or "cuda" (or None: the model's device, decided at each step). On CUDA the
    totals are the allocator's; on CPU they are exact accounting. `records` holds one
    StepRecord per step; `timeline(step)` gives the events a plot draws.
    attribute_modules: also record activation bytes per module (`record.activations_by_module`).
    Off by default: module hooks put every module call on PyTorch's slow path, which costs more
    than the rest of the meter on a tiny model. `measure_step` turns it on for one-off measures.
    """

    def __init__(self, device=None, *, attribute_modules: bool = False):
        self.device = as_device(device)
        if self.device is not None and self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("MemoryMeter(device='cuda') but torch.cuda.is_available() is False; use 'cpu'")
        self.attribute_modules = attribute_modules
        self.records: list[StepRecord] = []
        self._active: _ActiveStep | None = None

    # -- recording ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, model: nn.Module, optimizer=None) -> Iterator[StepRecord]:
        """Record one training step of `model` (and `optimizer`, whose state is counted)."""
        check_module(model)
        if optimizer is not None and not hasattr(optimizer, "state"):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        if self._active is not None:
            raise RuntimeError("meter.step(...) is already recording a step; steps cannot nest")
        device = self._device_for(model)
        source = SOURCE_CUDA if device.type == "cuda" else SOURCE_CPU
        record = StepRecord(index=len(self.records), source=source)
        active = self._active = _ActiveStep(record, model, optimizer, device)
        start = time.perf_counter()
        try:
            if active.cuda:
                torch.cuda.reset_peak_memory_stats(device)
            self._sample("start")
            # The post-accumulate-grad hook sees each .grad appear as backward proceeds.
            for param in active.params:
                if param.requires_grad:
                    active.handles.append(param.register_post_accumulate_grad_hook(active.on_grad))
            active.counter = SavedTensorCounter(
                model,
                device=device if active.cuda else None,
                attribute_modules=self.attribute_modules,
                on_change=active.event,
            )
            with active.counter:
                yield record
        except BaseException as error:
            # Keep the partial record: memory up to an out-of-memory error is worth seeing.
            record.error = f"{type(error).__name__}: {error}"
            raise
        finally:
            if active.counter is not None:
                active.counter.on_change = None  # late releases (a graph dropped later) belong to no step
            for handle in active.handles:
                handle.remove()
            self._finish(active, time.perf_counter() - start)

    def mark(self, label: str) -> MemoryBreakdown:
        """Sample memory now and name the phase that just ended ("forward", "backward", ...)."""
        if not isinstance(label, str) or not label:
            raise ValueError(f"mark() needs a non-empty string label, got {label!r}")
        if label in ("start", END_PHASE):
            raise ValueError(f"{label!r} is reserved for the meter's own samples")
        if self._active is None:
            raise RuntimeError("meter.mark() was called outside `with meter.step(model, optimizer):`")
        return self._sample(label)

    def _sample(self, label: str) -> MemoryBreakdown:
        active = self._active
        active.resync()
        event = active.event(phase=label)
        active.label_pending(label)
        breakdown = _breakdown(event, active.record.source)
        active.record.samples.append((label, breakdown))
        return breakdown

    def _finish(self, active: _ActiveStep, seconds: float) -> None:
        try:
            active.resync()
            active.event(phase=END_PHASE)
            active.label_pending(END_PHASE)
            record = active.record
            record.samples.append((END_PHASE, _breakdown(record.events[-1], record.source)))
            record.peak = self._peak(active)
            counter = active.counter
            if counter is not None:
                record.activations_by_module = dict(counter.by_module)
                record.saved_activation_bytes = counter.saved_activation_bytes
                record.saved_cast_weight_bytes = counter.saved_cast_weight_bytes
            record.seconds = seconds
            self.records.append(record)
        finally:
            self._active = None

    @staticmethod
    def _peak(active: _ActiveStep) -> MemoryBreakdown:
        event = active.peak_event
        if not active.cuda:
            return _breakdown(event, SOURCE_CPU)
        # The allocator's peak can fall between samples (a temporary inside an op): keep its
        # figure as the total and explain the categories by the largest sample.
        peak = torch.cuda.max_memory_allocated(active.device)
        b = _breakdown(event, SOURCE_CUDA_PEAK)
        b.other = max(0, peak - (b.total - b.other))
        return b

    def _device_for(self, model: nn.Module) -> torch.device:
        device = model_device(model)
        if self.device is not None and self.device.type != device.type:
            raise ValueError(f"the meter measures {self.device} but the model lives on {device}")
        return device

    # -- reading --------------------------------------------------------------------------------

    def timeline(self, step: int = -1) -> list[TimelineEvent]:
        """(event_index, phase, total_bytes, breakdown) for every event of one recorded step."""
        return self._record(step).timeline()

    def peaks(self) -> list[int]:
        """The peak bytes of every recorded step, in order."""
        return [record.peak_bytes for record in self.records]

    @property
    def last(self) -> StepRecord:
        return self._record(-1)

    def reset(self) -> None:
        """Forget all records (between runs that should not be compared)."""
        if self._active is not None:
            raise RuntimeError("cannot reset the meter while a step is being recorded")
        self.records.clear()

    def _record(self, step: int) -> StepRecord:
        if not self.records:
            raise ValueError("the meter has recorded no step yet: run a step inside `with meter.step(...)`")
        if not -len(self.records) <= step < len(self.records):
            raise ValueError(f"step {step} out of range: the meter has {len(self.records)} records")
        return self.records[step]


# ----------------------------------------------------------------------------------------------
# Conveniences
# ----------------------------------------------------------------------------------------------


def measure_step(
    model: nn.Module,
    optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    meter: MemoryMeter | None = None,
    attribute_modules: bool = True,
) -> StepRecord:
    """Run exactly one training step (the library's one step, `training.training_step`) under a meter;
    return its record.

    A new meter (attributing activations to modules) is used unless `meter` is given.
    `optimizer=None` measures forward and backward only. loss_fn: None for the token-mean cross-entropy.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("batch must be a pair (inputs, targets)")
    meter = meter if meter is not None else MemoryMeter(attribute_modules=attribute_modules)
    training_step(model, optimizer, [batch], loss_fn=loss_fn, autocast_dtype=autocast_dtype, meter=meter)
    return meter.records[-1]


@dataclass(frozen=True)
class ProfilerPeak:
    """The CPU allocator's figures for one call, as torch.profiler recorded them."""

    peak_bytes: int
    net_bytes: int
    source: str = SOURCE_PROFILER

    def __int__(self) -> int:
        return self.peak_bytes

    def __str__(self) -> str:
        return f"peak {self.peak_bytes / MIB:.3f} MiB, net {self.net_bytes / MIB:+.3f} MiB ({self.source})"


def profiler_peak_bytes(fn: Callable, *args, **kwargs) -> ProfilerPeak:
    """Call `fn(*args, **kwargs)` once under torch.profiler and return the allocator's peak.

    Every allocation and free is a "[memory]" event with its size; their running sum, in time
    order, is the bytes allocated above the level at entry, and its maximum is the peak. Unlike
    accounting, this sees temporaries inside operations. It is slow: use it to check, not to train.
    """
    if not callable(fn):
        raise ValueError(f"profiler_peak_bytes needs a callable, got {type(fn).__name__}")
    os.environ["KINETO_LOG_LEVEL"] = "6"
    # The profiler torch.profiler.profile runs underneath, called directly: the same events, without
    # torch.profiler's own start, whose check for torch._inductor imports the whole compiler (3-6 s, once).
    with torch.autograd.profiler.profile(use_cpu=True, profile_memory=True, use_kineto=True) as prof:
        fn(*args, **kwargs)
    try:
        events = prof.kineto_results.events()
    except AttributeError as error:  # a private path; say so plainly if a torch release moves it
        raise RuntimeError(f"this torch ({torch.__version__}) does not expose profiler memory events") from error
    allocations = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    running = peak = 0
    for _, nbytes in allocations:
        running += nbytes
        peak = max(peak, running)
    return ProfilerPeak(peak_bytes=peak, net_bytes=running)

"""What crosses the wire in a step: every collective counted, and the bytes this process really sent.

Two figures, from two sources, for one rank:

* `CollectiveLog` wraps torch.distributed's collectives (all_reduce, broadcast, reduce, all-gather and
  reduce-scatter in their forms, send/recv) while it is active, and records each call: its name, its
  payload (the bytes of the tensor it reduces, or of the full gathered tensor), and the phase the code
  was in (`log.phase("backward")`, or module hooks: `log.watch(model)` names "forward layers.0" ..., and
  "backward layers.0" from the moment that module's output gradient arrives).
  It sees what Python code calls, ours and FSDP2's (fully_shard calls dist.all_gather_single and
  dist.reduce_scatter_single), not DistributedDataParallel's C++ reducer.
* `bytes_sent()` reads the kernel's own count of bytes this process wrote (Linux /proc/self/io,
  `wchar`: sockets included), so the difference across a step is what the backend really sent,
  whoever called it; headers and the store's small messages come on top.

The ring formulas they are compared with (per rank, for a buffer of B bytes and N ranks):
all-reduce 2(N-1)/N x B (a reduce-scatter then an all-gather), all-gather and reduce-scatter (N-1)/N x B
of the full tensor, broadcast (N-1)/N x B on average over ranks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["Call", "CollectiveLog", "bytes_sent", "ring_all_reduce_bytes", "ring_gather_bytes"]

# name -> which argument is the payload ("in" the input, "out" the full output), as torch 2.13 spells them
_PAYLOAD = {
    "all_reduce": (0, "tensor"), "broadcast": (0, "tensor"), "reduce": (0, "tensor"),
    "all_gather_single": (0, "output_tensor"), "all_gather_into_tensor": (0, "output_tensor"),
    "reduce_scatter_single": (1, "input"), "reduce_scatter_tensor": (1, "input"),
    "all_gather": (0, "tensor_list"), "reduce_scatter": (1, "input_list"),
    "send": (0, "tensor"), "recv": (0, "tensor"), "isend": (0, "tensor"), "irecv": (0, "tensor"),
}
_KIND = {"all_gather_single": "all_gather", "all_gather_into_tensor": "all_gather",
         "reduce_scatter_single": "reduce_scatter", "reduce_scatter_tensor": "reduce_scatter",
         "isend": "send", "irecv": "recv"}
_IO = Path("/proc/self/io")


def ring_all_reduce_bytes(nbytes: int, world_size: int) -> float:
    """Bytes each rank sends in a ring all-reduce of `nbytes`: 2(N-1)/N x nbytes."""
    return 2 * (world_size - 1) / world_size * nbytes


def ring_gather_bytes(nbytes: int, world_size: int) -> float:
    """Bytes each rank sends in a ring all-gather (or reduce-scatter) of a full tensor of `nbytes`."""
    return (world_size - 1) / world_size * nbytes


def bytes_sent() -> int:
    """Bytes this process has written so far, as the kernel counts them (sockets included).
    RuntimeError where /proc/self/io does not exist (not Linux)."""
    try:
        for line in _IO.read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError as error:
        raise RuntimeError(f"cannot read {_IO} ({error}): bytes_sent() needs Linux") from None
    raise RuntimeError(f"{_IO} has no wchar line")


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        if callable(getattr(value, "to_local", None)):
            value = value.to_local()
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


@dataclass(frozen=True)
class Call:
    """One collective: its kind (all_reduce, all_gather, reduce_scatter, broadcast, reduce, ...), the
    payload bytes, and the phase it was called in."""

    kind: str
    nbytes: int
    phase: str


@dataclass
class CollectiveLog:
    """Records torch.distributed collectives while active (`with CollectiveLog() as log:`).

    log.calls: every Call in order; log.phase(label) names what follows; log.watch(model) names phases
    after the modules running ("forward layers.0", "backward layers.0"); log.total(kind) sums payloads.
    """

    calls: list[Call] = field(default_factory=list)
    current: str = ""
    _saved: dict = field(default_factory=dict, repr=False)
    _handles: list = field(default_factory=list, repr=False)

    def __enter__(self) -> "CollectiveLog":
        if self._saved:
            raise RuntimeError("this CollectiveLog is already recording")
        for name in _PAYLOAD:
            original = getattr(dist, name)
            self._saved[name] = original
            setattr(dist, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(dist, name, original)
        self._saved.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _wrap(self, name: str, original):
        position, keyword = _PAYLOAD[name]
        kind = _KIND.get(name, name)

        def recorded(*args, **kwargs):
            payload = kwargs.get(keyword, args[position] if len(args) > position else None)
            self.calls.append(Call(kind, _nbytes(payload), self.current))
            return original(*args, **kwargs)

        recorded.__wrapped__ = original
        return recorded

    @contextlib.contextmanager
    def phase_of(self, label: str) -> Iterator[None]:
        previous, self.current = self.current, label
        try:
            yield
        finally:
            self.current = previous

    def phase(self, label: str) -> None:
        self.current = label

    def watch(self, model: nn.Module, names: list[str] | None = None) -> None:
        """Name phases after the modules that run: before a module's forward, "forward <name>"; before
        its backward, "backward <name>". names: which modules (default: the model's direct children and
        the items of ModuleLists, e.g. layers.0, layers.1)."""
        modules = dict(model.named_modules())
        if names is None:
            names = []
            for name, child in model.named_children():
                is_list = isinstance(child, nn.ModuleList)
                names += [f"{name}.{i}" for i in range(len(child))] if is_list else [name]
        for name in names:
            module = modules[name]
            # prepend: our label is set before fully_shard's own hooks issue their collectives
            self._handles.append(module.register_forward_pre_hook(self._namer(f"forward {name}"), prepend=True))
            self._handles.append(module.register_forward_hook(self._label_backward(f"backward {name}"), prepend=True))

    def _namer(self, label: str):
        def hook(*_):
            self.current = label

        return hook

    def _label_backward(self, label: str):
        """After the module's forward: a hook on its output that names the phase when that output's
        gradient arrives, i.e. when the module's backward begins (registered before fully_shard's)."""

        def set_label(grad):
            self.current = label

        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(set_label)

        return hook

    def total(self, kind: str | None = None, phase: str | None = None) -> int:
        return sum(c.nbytes for c in self.calls if (kind is None or c.kind == kind)
                   and (phase is None or c.phase == phase))

    def count(self, kind: str | None = None) -> int:
        return sum(1 for c in self.calls if kind is None or c.kind == kind)

    def clear(self) -> None:
        self.calls.clear()

    def summary(self) -> list[tuple[str, str, int, int]]:
        """(phase, kind, calls, payload bytes) for each run of consecutive calls of one kind in one phase."""
        rows: list[list] = []
        for call in self.calls:
            if rows and rows[-1][0] == call.phase and rows[-1][1] == call.kind:
                rows[-1][2] += 1
                rows[-1][3] += call.nbytes
            else:
                rows.append([call.phase, call.kind, 1, call.nbytes])
        return [tuple(r) for r in rows]

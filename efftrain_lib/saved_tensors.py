"""The tensors autograd saves for backward, counted while they are alive: the meter's view of activations.

`SavedTensorCounter` is what `MemoryMeter` (efftrain_lib.meter) uses for the `activations` and
`cast_weights` categories on every device, and what the checkpointing chapter uses on its own to see
what one layer keeps. The storage helpers below are shared with the meter's static accounting: a
tensor costs the bytes of its storage, counted once however many views share it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Iterable

import torch
import torch.nn as nn

__all__ = ["OUTSIDE_MODULES", "SavedTensorCounter", "as_device", "check_module", "storage_key", "unique_bytes"]


def storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    """(key, bytes) of the storage behind `tensor`: what keeping the tensor alive really costs.

    A view keeps its whole storage alive, so we count storage bytes, once per storage. Tensors
    without a real storage (meta tensors, sparse tensors, some subclasses) cannot be deduplicated:
    they count their own bytes under a key unique to the object. A sharded tensor (a DTensor, as FSDP2's
    parameters, gradients and optimizer state are) costs this rank its local shard only.
    """
    if callable(getattr(tensor, "to_local", None)):  # torch.distributed.tensor.DTensor
        tensor = tensor.to_local()
    try:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr != 0:
            return ptr, storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    return -id(tensor), tensor.numel() * tensor.element_size()


def on_device(tensor: torch.Tensor, device: torch.device | None) -> bool:
    if device is None:
        return True
    if tensor.device.type != device.type:
        return False
    return device.index is None or tensor.device.index == device.index


def unique_bytes(tensors: Iterable[torch.Tensor], device: torch.device | None = None) -> int:
    """Bytes of the distinct storages behind `tensors` (tied weights count once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if tensor is None or not on_device(tensor, device):
            continue
        key, nbytes = storage_key(tensor)
        seen[key] = nbytes
    return sum(seen.values())


def check_module(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")


def as_device(device) -> torch.device | None:
    return None if device is None else torch.device(device)


# ----------------------------------------------------------------------------------------------
# Tensors saved for backward
# ----------------------------------------------------------------------------------------------

OUTSIDE_MODULES = "(outside modules)"

# The counter recording in each thread (torch's saved-tensor hooks are per thread, and only the innermost
# pair applies): a second one entered inside it would blind the first, so it is refused.
_ACTIVE = threading.local()


class SavedTensorCounter:
    """Counts the bytes autograd saves for backward, while they are alive.

    Inside `with SavedTensorCounter(model) as counter:` every tensor autograd saves passes
    through a pack hook. The hook hands autograd the same storage back (see `_pack`) and keeps
    only integers and a weak reference, so the counter never keeps memory alive. Bytes are
    released when autograd drops the saved tensor: node by node as backward runs (the engine
    frees a node's saved tensors right after running it, unless retain_graph=True), or all at
    once when a graph is dropped without backward. Tensors the caller still holds (the input
    batch) stop counting then too: they are no longer saved for backward.

    Scope: the hooks see what is saved while the counter is active (the meter keeps it active
    through backward, so reentrant checkpointing's recomputation is seen). Non-reentrant
    checkpointing saves its recomputed tensors under its own hooks, which the counter does not see.

    What is counted:
    * storages, once each (q/k/v projections all save the same normalised input: counted once);
    * not parameters or buffers (they are weights, and are alive anyway);
    * `cast_weights` separately from `activations` (see `_is_cast_weight`).

    Attributes: `activation_bytes` and `cast_weight_bytes` (alive now), `peak_bytes` (largest
    sum of the two), `saved_activation_bytes` and `saved_cast_weight_bytes` (everything saved
    since entry), `by_module` (activation bytes by the innermost module that saved them, when a
    model is given). `on_change`, if set, is called with no arguments after every change.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        device=None,
        attribute_modules: bool = True,
        on_change: Callable[[], None] | None = None,
    ):
        if model is not None:
            check_module(model)
        self.model = model
        self.device = as_device(device)
        self.attribute_modules = attribute_modules and model is not None
        self.on_change = on_change
        self._lock = threading.Lock()
        self._weight_keys: set[int] = set()
        self._frozen_shapes: dict[tuple, set] = {}
        self._storages: dict[int, list] = {}  # storage key -> [nbytes, kind, live tensor count]
        self._refs: dict[weakref.ref, int] = {}  # weak ref to a saved tensor -> its storage key
        self._module_stack: list[str] = []
        self._handles: list = []
        self._hooks_ctx = None
        self.activation_bytes = 0
        self.cast_weight_bytes = 0
        self.peak_bytes = 0
        self.saved_activation_bytes = 0
        self.saved_cast_weight_bytes = 0
        self.by_module: dict[str, int] = {}

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> "SavedTensorCounter":
        if self._hooks_ctx is not None:
            raise RuntimeError("SavedTensorCounter is already active; it cannot be entered twice")
        if getattr(_ACTIVE, "counter", None) is not None:
            raise RuntimeError(
                "another SavedTensorCounter (a MemoryMeter's step, or a counter of its own) is already recording "
                "in this thread: saved-tensor hooks do not stack (only the innermost sees a tensor), so the outer "
                "one would silently report 0 for everything the inner one records. Finish one before starting "
                "the other, or measure with one meter.")
        self._index_weights()
        if self.attribute_modules:
            self._register_module_hooks()
        self._hooks_ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks_ctx.__enter__()
        _ACTIVE.counter = self
        return self

    def __exit__(self, *exc) -> None:
        self._hooks_ctx.__exit__(*exc)
        self._hooks_ctx = None
        _ACTIVE.counter = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._module_stack.clear()

    @property
    def live_bytes(self) -> int:
        """Activations plus cast weights alive now."""
        return self.activation_bytes + self.cast_weight_bytes

    # -- what is a weight -----------------------------------------------------------------------

    def _index_weights(self) -> None:
        self._weight_keys.clear()
        self._frozen_shapes.clear()
        if self.model is None:
            return
        params = list(self.model.parameters())
        for tensor in params + list(self.model.buffers()):
            self._weight_keys.add(storage_key(tensor)[0])
        for param in params:
            if not param.requires_grad:
                self._frozen_shapes.setdefault(tuple(param.shape), set()).add(param.dtype)

    def _is_weight(self, tensor: torch.Tensor) -> bool:
        return isinstance(tensor, nn.Parameter) or storage_key(tensor)[0] in self._weight_keys

    def _is_cast_weight(self, base: torch.Tensor) -> bool:
        """Is `base` a copy of a weight in another dtype (what autocast saves for Linear)?

        Why the graph and not only shapes: autocast casts a trainable weight with `.to(dtype)`,
        so the copy's grad_fn is ToCopyBackward0 whose next node is the weight's AccumulateGrad.
        That is exact and free, and never mistakes an activation that happens to have a weight's
        shape. A frozen weight (LoRA's base layers) leaves no graph behind, so for those we fall
        back to the documented heuristic: a leaf not requiring grad whose shape equals a frozen
        parameter's shape and whose dtype differs from it.
        """
        fn = base.grad_fn
        if fn is not None:
            if type(fn).__name__ != "ToCopyBackward0" or not fn.next_functions:
                return False
            source = getattr(fn.next_functions[0][0], "variable", None)
            return source is not None and self._is_weight(source)
        if base.requires_grad:
            return False
        dtypes = self._frozen_shapes.get(tuple(base.shape))
        return dtypes is not None and base.dtype not in dtypes

    # -- hooks ----------------------------------------------------------------------------------

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        # Return `tensor.detach()`, not `tensor`: the same storage and version counter (no copy,
        # autograd still catches in-place changes and restores grad_fn on unpack), but without
        # grad_fn. Returning a saved *output* itself would make a cycle through C++ (output ->
        # grad_fn -> SavedVariable -> output) that gc cannot see, leaking the whole graph whenever
        # it is dropped without backward (pytorch/pytorch#115255, #153049). A bonus: the detached
        # tensor belongs to the SavedVariable alone, so it dies exactly when autograd releases
        # the saved tensor, and a weak reference to it tells us when.
        saved = tensor.detach()
        if on_device(tensor, self.device):
            self._record(tensor, saved)
        return saved

    def _unpack(self, saved: torch.Tensor) -> torch.Tensor:
        return saved

    def _record(self, tensor: torch.Tensor, saved: torch.Tensor) -> None:
        # Cheapest tests first: this runs for every tensor autograd saves.
        base = tensor._base if tensor._base is not None else tensor
        if isinstance(base, nn.Parameter):
            return
        key, nbytes = storage_key(tensor)
        if key in self._weight_keys:
            return
        with self._lock:
            # Only a weak reference (the dict's key) and an int: the counter must never keep a
            # saved tensor alive. One bound method serves as every callback: no closure per save.
            self._refs[weakref.ref(saved, self._release)] = key
            entry = self._storages.get(key)
            if entry is not None:  # the same storage saved again (by another op, or as a view)
                entry[2] += 1
                return
            kind = "cast_weights" if self._is_cast_weight(base) else "activations"
            self._storages[key] = [nbytes, kind, 1]
            if kind == "activations":
                self.activation_bytes += nbytes
                self.saved_activation_bytes += nbytes
                if self.attribute_modules:
                    name = self._module_stack[-1] if self._module_stack else OUTSIDE_MODULES
                    self.by_module[name] = self.by_module.get(name, 0) + nbytes
            else:
                self.cast_weight_bytes += nbytes
                self.saved_cast_weight_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        if self.on_change is not None:
            self.on_change()

    def _release(self, ref: weakref.ref) -> None:
        # Fires when autograd drops a saved tensor: as backward runs each node (unless
        # retain_graph=True), or when a graph is dropped without backward.
        with self._lock:
            key = self._refs.pop(ref, None)
            entry = self._storages.get(key) if key is not None else None
            if entry is None:
                return
            entry[2] -= 1
            if entry[2] > 0:  # another saved tensor still holds the storage
                return
            del self._storages[key]
            if entry[1] == "activations":
                self.activation_bytes -= entry[0]
            else:
                self.cast_weight_bytes -= entry[0]
        if self.on_change is not None:
            self.on_change()

    def _register_module_hooks(self) -> None:
        # Attribution is cheap: two Python calls per module call, and a name on a stack.
        for name, module in self.model.named_modules():
            label = name or "(model)"
            self._handles.append(module.register_forward_pre_hook(self._push(label)))
            self._handles.append(module.register_forward_hook(self._pop(label), always_call=True))

    def _push(self, label: str) -> Callable:
        def hook(_module, _inputs):
            self._module_stack.append(label)

        return hook

    def _pop(self, label: str) -> Callable:
        def hook(_module, _inputs, _output):
            if self._module_stack and self._module_stack[-1] == label:
                self._module_stack.pop()

        return hook

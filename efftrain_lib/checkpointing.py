"""Gradient checkpointing built from scratch, hardened, and applied to the tiny transformer.

Checkpointing trades compute for memory: run a function without keeping what its backward would
need, keep only its inputs, and run it again (with grad enabled) when backward reaches it.

    out = checkpoint(block, x)                        # torch.utils.checkpoint(block, x, use_reentrant=False)'s gradients
    out = checkpoint_non_reentrant(block, x)          # the same, built like torch's: saved-tensor hooks
    out = checkpoint_sequential(blocks, 4, x)         # same split as torch's: the last segment runs normally
    enable_checkpointing(model, every=4)              # TinyTransformer: checkpoint every 4 decoder layers
    enable_checkpointing(model, policy="attention")   # selective: only the attention sub-block of each layer

`checkpoint` is an autograd.Function in the reentrant style (forward under no_grad, recompute and an
inner `torch.autograd.backward` in backward), made correct step by step:

* parameters inside `fn` receive gradients: the inner backward accumulates them into `.grad`;
* non-tensor arguments and keyword arguments: tensors (positional or keyword, top level) go through
  autograd, everything else is kept as is;
* inputs that do not require grad (token ids, a frozen embedding's output): they are not made to
  require grad, and when no input requires grad a zero-size "anchor" tensor that does is passed
  through, so that the output still reaches the parameters inside (torch's reentrant mode silently
  gives them no gradient there; its non-reentrant mode does not);
* several outputs: a tuple of tensors (non-tensor items allowed); only the outputs that received a
  gradient are back-propagated;
* the RNG state (CPU, and CUDA for the devices of the tensor arguments) is stashed in forward and
  restored inside `torch.random.fork_rng` for the recompute, so dropout draws the same mask and
  the caller's RNG stream is left as it was; the autocast state is replayed;
* a function that changes one of its tensor inputs in place (a frozen embedding's output under LoRA,
  `x.mul_(2)`): the recompute would start from the changed values and give wrong gradients, so
  backward raises instead, naming the argument (version counters, `tensor._version`, compared before
  and after the forward). torch's non-reentrant mode refuses it too: it saves its inputs as autograd
  saved tensors (`_CheckpointFrame.save_inputs` -> `torch._C._autograd._make_saved_tensor`), and
  backward raises autograd's "one of the variables needed for gradient computation has been modified
  by an inplace operation: [...] is at version 1; expected version 0 instead" (torch 2.13,
  torch/utils/checkpoint.py); its reentrant mode, like this module before, gives silently wrong
  gradients when the changed input does not require grad (x2 for `frozen.mul_(2)`, measured in
  tests/test_checkpointing.py). A change after the checkpoint returns, before backward, is caught by
  autograd itself (the saved inputs' versions).

Reentrant semantics, exactly: the gradients equal those of torch's use_reentrant=False (and of no
checkpoint at all), but they arrive the reentrant way. backward runs an inner `torch.autograd.backward`
over the recomputed segment, which accumulates straight into the `.grad` of the parameters inside; the
outer backward delivers the rest. A parameter used both inside and outside a checkpoint (or in two
checkpoints) therefore gets its gradient in pieces: every tensor hook (`register_hook`) and
post-accumulate-grad hook on it fires once per piece (twice for inside + outside), as with
use_reentrant=True, where use_reentrant=False fires once with the sum. `.grad` ends up the same; code that
expects one hook call per parameter per backward (gradient bucketing as in DDP, clipping or compressing
in a hook, counting calls) sees partial gradients. tests/test_checkpointing.py measures all three.

Limits, stated: tensors nested inside lists or dicts are treated as constants (no gradient flows
to them), as torch's reentrant mode does; `torch.autograd.grad` through a checkpoint is refused
with a clear error (use `.backward()`); backward twice through one checkpoint needs
`retain_graph=True` on the first (the segment is then recomputed again). When nothing inside
requires grad, the output still reports requires_grad=True (the anchor): backward through it is
harmless and gives no gradients.
"""

from __future__ import annotations

import contextlib
import math
import types
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

__all__ = [
    "checkpoint",
    "checkpoint_non_reentrant",
    "checkpoint_sequential",
    "sequential_split",
    "enable_checkpointing",
    "disable_checkpointing",
    "checkpointing_plan",
    "POLICIES",
    "IMPLEMENTATIONS",
]

_SECOND_BACKWARD = (
    "checkpoint: backward ran through this checkpoint a second time, but its saved inputs were freed "
    "after the first backward. Pass retain_graph=True to the first backward (the segment is then "
    "recomputed again), or run the forward again."
)
_AUTOGRAD_GRAD = (
    "checkpoint: torch.autograd.grad (or backward(inputs=...)) cannot go through this checkpoint: its "
    "recomputation accumulates gradients into .grad with an inner backward. Call .backward(), or use "
    "torch.utils.checkpoint.checkpoint(..., use_reentrant=False)."
)


# ---------------------------------------------------------------------------------------------
# RNG and autocast state
# ---------------------------------------------------------------------------------------------


def _cuda_rng_states(tensors: Sequence[torch.Tensor]) -> tuple[list[int], list[torch.Tensor]]:
    """The CUDA RNG state of every CUDA device the tensors live on (nothing if CUDA is unused).

    Like torch, we do not initialise CUDA just to read its state: a function that first touches the
    GPU inside the checkpoint cannot have its GPU dropout replayed.
    """
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return [], []
    devices = sorted({t.device.index if t.device.index is not None else torch.cuda.current_device()
                      for t in tensors if t.is_cuda})
    return devices, [torch.cuda.get_rng_state(d) for d in devices]


def _autocast_state() -> list[tuple[str, bool, torch.dtype, bool]]:
    """(device_type, enabled, dtype, cache_enabled) for CPU and, if present, CUDA autocast."""
    cache = torch.is_autocast_cache_enabled()
    states = [("cpu", torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), cache)]
    if torch.cuda.is_available():
        states.append(("cuda", torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), cache))
    return states


def _replay_autocast(states) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for device_type, enabled, dtype, cache in states:
        stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache))
    return stack


# ---------------------------------------------------------------------------------------------
# checkpoint
# ---------------------------------------------------------------------------------------------


class _Call:
    """fn with its non-tensor arguments, called with fresh tensors in the tensor slots.

    The original tensors are not kept here (only placeholders): the saved copies in the autograd
    context are the only references, so they are freed when backward has used them.
    """

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self.fn = fn
        values = list(args) + list(kwargs.values())
        self.n_args = len(args)
        self.keys = list(kwargs)
        self.slots = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
        self.tensors = [values[i] for i in self.slots]
        for i in self.slots:
            values[i] = None
        self.values = values

    def pop_tensors(self) -> list[torch.Tensor]:
        tensors, self.tensors = self.tensors, []
        return tensors

    def __call__(self, tensors: Sequence[torch.Tensor]):
        values = list(self.values)
        for i, tensor in zip(self.slots, tensors):
            values[i] = tensor
        return self.fn(*values[: self.n_args], **dict(zip(self.keys, values[self.n_args :])))


def _changed_in_place_message(call: _Call, changed: list[tuple[int, int, int]]) -> str:
    def name(index: int) -> str:
        slot = call.slots[index]
        return f"argument {slot}" if slot < call.n_args else f"keyword argument {call.keys[slot - call.n_args]!r}"

    which = ", ".join(f"{name(i)} (version {before} -> {after})" for i, before, after in changed)
    return (
        f"checkpoint: {getattr(call.fn, '__name__', type(call.fn).__name__)} changed its tensor input in place "
        f"during the forward: {which}. The recompute in backward would start from the changed values and give "
        "wrong gradients. Change a copy inside the function (x = x.clone() before the in-place op), or make the "
        "change outside the checkpoint. (torch.utils.checkpoint with use_reentrant=False refuses this too.)"
    )


def _check_outputs(outputs, fn) -> None:
    if isinstance(outputs, torch.Tensor):
        return
    if isinstance(outputs, tuple):
        return
    raise TypeError(
        f"checkpoint: {getattr(fn, '__name__', type(fn).__name__)} returned {type(outputs).__name__}; a "
        "checkpointed function must return a tensor or a tuple (of tensors and other values)"
    )


class CheckpointFunction(torch.autograd.Function):
    """forward: run the call under no_grad, keep only its tensor inputs (and the RNG/autocast state).
    backward: restore that state, recompute with grad enabled on detached inputs, back-propagate."""

    @staticmethod
    def forward(ctx, call: _Call, preserve_rng_state: bool, anchor, *tensors):
        ctx.call = call
        ctx.preserve_rng_state = preserve_rng_state
        ctx.autocast = _autocast_state()
        if preserve_rng_state:
            ctx.cpu_rng = torch.get_rng_state()
            ctx.cuda_devices, ctx.cuda_rng = _cuda_rng_states(tensors)
        ctx.input_requires_grad = [t.requires_grad for t in tensors]
        ctx.save_for_backward(*tensors)  # through autograd: freed after backward, version-checked
        versions = [t._version for t in tensors]  # save_for_backward records the versions after forward
        with torch.no_grad():  # the point of it all: no graph, nothing saved inside fn
            outputs = call(tensors)
        ctx.changed_in_place = [(i, v, t._version) for i, (t, v) in enumerate(zip(tensors, versions))
                                if t._version != v]
        _check_outputs(outputs, call.fn)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        is_valid = getattr(torch.autograd, "_is_checkpoint_valid", lambda: True)
        if not is_valid():
            raise RuntimeError(_AUTOGRAD_GRAD)
        if ctx.changed_in_place:
            raise RuntimeError(_changed_in_place_message(ctx.call, ctx.changed_in_place))
        try:
            saved = ctx.saved_tensors
        except RuntimeError as error:
            if "second time" in str(error) or "freed" in str(error):
                raise RuntimeError(_SECOND_BACKWARD) from None
            raise
        # Detach: the recomputed graph must end at these inputs, not run on into the graph that
        # produced them (that part gets its gradient from the engine, through our return value).
        inputs = [t.detach().requires_grad_(needs) for t, needs in zip(saved, ctx.input_requires_grad)]
        devices = ctx.cuda_devices if ctx.preserve_rng_state else []
        with torch.random.fork_rng(devices=devices, enabled=ctx.preserve_rng_state):
            if ctx.preserve_rng_state:
                torch.set_rng_state(ctx.cpu_rng)
                for device, state in zip(ctx.cuda_devices, ctx.cuda_rng):
                    torch.cuda.set_rng_state(state, device)
            with torch.enable_grad(), _replay_autocast(ctx.autocast):
                outputs = ctx.call(inputs)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        pairs = [
            (out, grad) for out, grad in zip(outputs, grad_outputs)
            if isinstance(out, torch.Tensor) and out.requires_grad and grad is not None
        ]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
        grads = tuple(t.grad if needs else None for t, needs in zip(inputs, ctx.input_requires_grad))
        return (None, None, None) + grads


def checkpoint(fn: Callable, *args, preserve_rng_state: bool = True, **kwargs) -> Any:
    """What `fn(*args, **kwargs)` returns, with the same gradients, keeping only the inputs in memory.

    fn: any callable returning a tensor or a tuple. Tensor arguments (positional or keyword) are
    saved and recomputed from; other arguments are passed through unchanged. preserve_rng_state:
    replay the CPU (and CUDA) RNG state, so dropout inside fn draws the same mask on recompute.
    With grad disabled (evaluation) fn simply runs: there is nothing to save.
    """
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    if not isinstance(preserve_rng_state, bool):
        raise TypeError(f"checkpoint: preserve_rng_state must be True or False, got {preserve_rng_state!r}")
    if not torch.is_grad_enabled():
        return fn(*args, **kwargs)
    call = _Call(fn, args, kwargs)
    tensors = call.pop_tensors()
    # Without an input that requires grad the output would be cut from the graph, and the
    # parameters inside fn would get no gradient (the reentrant trap): pass an anchor that does.
    needs_anchor = not any(t.requires_grad for t in tensors)
    anchor_device = tensors[0].device if tensors else torch.device("cpu")
    anchor = torch.empty(0, device=anchor_device, requires_grad=True) if needs_anchor else None
    return CheckpointFunction.apply(call, preserve_rng_state, anchor, *tensors)


def checkpoint_non_reentrant(fn: Callable, *args, preserve_rng_state: bool = True, **kwargs) -> Any:
    """`checkpoint` built the other way, as torch's use_reentrant=False is (Exercise 2.3's API).

    fn runs normally, its graph recorded, inside saved-tensor hooks whose pack keeps an index instead of the
    tensor; the first unpack in backward recomputes fn (RNG and autocast replayed, inputs as they were) under
    hooks that collect what it saves, and each unpack returns the tensor at its index. The parameters inside
    are ordinary nodes of the graph: torch.autograd.grad reaches them, no anchor is needed when no input
    requires grad, and a hook on a parameter fires once per backward. After the forward it keeps the inputs
    (to recompute from), the RNG state and the output. An input changed in place after it was given, or a
    recompute that saves other tensors than the forward did, is a RuntimeError saying so.
    """
    if not callable(fn):
        raise TypeError(f"checkpoint_non_reentrant: fn must be callable, got {type(fn).__name__}")
    if not isinstance(preserve_rng_state, bool):
        raise TypeError("checkpoint_non_reentrant: preserve_rng_state must be True or False, "
                        f"got {preserve_rng_state!r}")
    if not torch.is_grad_enabled():
        return fn(*args, **kwargs)
    call = _Call(fn, args, kwargs)
    tensors = call.pop_tensors()
    versions = [t._version for t in tensors]
    autocast = _autocast_state()
    cpu_rng = torch.get_rng_state() if preserve_rng_state else None
    devices, cuda_rng = _cuda_rng_states(tensors) if preserve_rng_state else ([], [])
    recomputed: list[torch.Tensor] = []
    packed = 0

    def pack(_tensor):
        nonlocal packed
        packed += 1
        return packed - 1  # the tensor itself is not kept: that is the memory saved

    def recompute() -> None:
        changed = [(i, v, t._version) for i, (t, v) in enumerate(zip(tensors, versions)) if t._version != v]
        if changed:
            raise RuntimeError(_changed_in_place_message(call, changed))
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in tensors]  # saves what the forward saved
        with torch.random.fork_rng(devices=devices, enabled=preserve_rng_state):
            if preserve_rng_state:
                torch.set_rng_state(cpu_rng)
                for device, state in zip(devices, cuda_rng):
                    torch.cuda.set_rng_state(state, device)
            with torch.enable_grad(), _replay_autocast(autocast), \
                    torch.autograd.graph.saved_tensors_hooks(lambda t: recomputed.append(t) or t, lambda t: t):
                call(inputs)
        if len(recomputed) != packed:
            raise RuntimeError(f"checkpoint_non_reentrant: the recompute saved {len(recomputed)} tensors for backward "
                               f"where the forward saved {packed}: fn must do the same operations when run again "
                               "(no data-dependent control flow, no state changed by the first run)")

    def unpack(index: int) -> torch.Tensor:
        if not recomputed:
            recompute()
        return recomputed[index]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return call(tensors)


# ---------------------------------------------------------------------------------------------
# checkpoint_sequential
# ---------------------------------------------------------------------------------------------


def _as_function_list(functions) -> list[Callable]:
    if isinstance(functions, nn.Sequential):
        functions = list(functions.children())
    elif isinstance(functions, (nn.ModuleList, list, tuple)):
        functions = list(functions)
    else:
        raise TypeError(
            f"checkpoint_sequential: functions must be an nn.Sequential or a list of callables, got "
            f"{type(functions).__name__}"
        )
    for i, f in enumerate(functions):
        if not callable(f):
            raise TypeError(f"checkpoint_sequential: functions[{i}] is not callable ({type(f).__name__})")
    return functions


def sequential_split(n_functions: int, segments: int) -> list[tuple[int, int]]:
    """[(start, stop)) of each segment, as torch.utils.checkpoint.checkpoint_sequential splits them:
    segments-1 chunks of n // segments functions, the last chunk takes the rest."""
    if not isinstance(segments, int) or isinstance(segments, bool):
        raise TypeError(f"segments must be an int, got {type(segments).__name__}")
    if n_functions < 1:
        raise ValueError("checkpoint_sequential needs at least one function")
    if not 1 <= segments <= n_functions:
        raise ValueError(f"segments must be between 1 and the number of functions ({n_functions}), got {segments}")
    size = n_functions // segments
    bounds = [(start, start + size) for start in range(0, size * (segments - 1), size)]
    bounds.append((size * (segments - 1), n_functions))
    return bounds


def _run_range(functions: Sequence[Callable], start: int, stop: int) -> Callable:
    def run(x):
        for f in functions[start:stop]:
            x = f(x)
        return x

    run.__name__ = f"functions[{start}:{stop}]"
    return run


def checkpoint_sequential(functions, segments: int, input: torch.Tensor, preserve_rng_state: bool = True):
    """Run `functions` in order on `input`, split into `segments` chunks like torch's function of the
    same name: the first segments-1 chunks are checkpointed; the LAST chunk runs normally (its
    activations are kept: backward starts there at once, recomputing it would buy nothing).
    segments=1 therefore checkpoints nothing.
    """
    functions = _as_function_list(functions)
    bounds = sequential_split(len(functions), segments)
    x = input
    for start, stop in bounds[:-1]:
        x = checkpoint(_run_range(functions, start, stop), x, preserve_rng_state=preserve_rng_state)
    start, stop = bounds[-1]
    return _run_range(functions, start, stop)(x)


# ---------------------------------------------------------------------------------------------
# The tiny transformer, checkpointed
# ---------------------------------------------------------------------------------------------

POLICIES = ("block", "attention", "mlp", "sub_blocks")
IMPLEMENTATIONS = ("ours", "torch", "torch-reentrant")


def _checkpointer(impl: str, preserve_rng_state: bool, input_requires_grad: bool) -> Callable:
    if impl == "ours":
        ckpt = lambda fn, *args: checkpoint(fn, *args, preserve_rng_state=preserve_rng_state)  # noqa: E731
    else:
        from torch.utils.checkpoint import checkpoint as torch_checkpoint

        reentrant = impl == "torch-reentrant"
        ckpt = lambda fn, *args: torch_checkpoint(fn, *args, use_reentrant=reentrant,  # noqa: E731
                                                  preserve_rng_state=preserve_rng_state)
    if not input_requires_grad:
        return ckpt
    # Hugging Face's enable_input_require_grads(): an input cut from the graph (a frozen embedding's
    # output under LoRA) is made to require grad, so reentrant checkpointing still reaches the adapters.
    return lambda fn, x: ckpt(fn, x if x.requires_grad else x.detach().requires_grad_(True))


def attention_block(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention half of a DecoderLayer, residual excluded: dropout(self_attn(input_layernorm(x)))."""
    return layer.dropout(layer.self_attn(layer.input_layernorm(x)))


def mlp_block(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP half of a DecoderLayer, residual excluded: dropout(mlp(post_attention_layernorm(x)))."""
    return layer.dropout(layer.mlp(layer.post_attention_layernorm(x)))


class SegmentedLayers(nn.ModuleList):
    """The decoder layers, run `every` at a time inside one checkpoint.

    It holds the same layers under the same names (the state dict does not change). Only iteration
    differs: TinyTransformer.forward runs `for layer in self.layers: x = layer(x)`, and iterating
    this list yields one callable per segment, which runs the segment's layers inside a checkpoint.
    """

    def __init__(self, layers, every: int, ckpt: Callable, description: str, only: frozenset | None = None):
        super().__init__(layers)
        self.every = every
        self._ckpt = ckpt
        self.description = description
        self.only = only  # indices of the segments to checkpoint (None: every segment)

    def segments(self) -> list[tuple[int, int]]:
        n = len(self)
        return [(start, min(start + self.every, n)) for start in range(0, n, self.every)]

    def __iter__(self):
        layers = list(self._modules.values())
        for index, (start, stop) in enumerate(self.segments()):
            checkpointed = self.only is None or index in self.only
            yield _Segment(layers[start:stop], self._ckpt if checkpointed else None)

    def plain(self) -> nn.ModuleList:
        return nn.ModuleList(self._modules.values())

    def extra_repr(self) -> str:
        return self.description


class _Segment:
    def __init__(self, layers, ckpt):
        self.layers, self.ckpt = layers, ckpt

    def run(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __call__(self, x):
        return self.run(x) if self.ckpt is None else self.ckpt(self.run, x)


def _sub_block_forward(ckpt: Callable, attention: bool, mlp: bool) -> Callable:
    """A DecoderLayer.forward that checkpoints the chosen halves (the seed notes' layer: both)."""

    def forward(layer, x):
        if attention:
            x = x + ckpt(lambda h: attention_block(layer, h), x)
        else:
            x = x + attention_block(layer, x)
        if mlp:
            return x + ckpt(lambda h: mlp_block(layer, h), x)
        return x + mlp_block(layer, x)

    return forward


@dataclass(frozen=True)
class CheckpointingPlan:
    policy: str
    every: int
    impl: str
    n_layers: int
    layers: tuple[int, ...] | None = None  # only these layers, each alone (None: every segment)

    @property
    def segments(self) -> int:
        if self.layers is not None:
            return len(self.layers)
        return math.ceil(self.n_layers / self.every) if self.policy == "block" else 0

    def __str__(self) -> str:
        if self.layers is not None:
            return f"{self.impl}: checkpoint layers {list(self.layers)} of {self.n_layers}, each alone"
        if self.policy == "block":
            return (f"{self.impl}: checkpoint every {self.every} of {self.n_layers} layers "
                    f"({self.segments} segments)")
        return f"{self.impl}: checkpoint the {self.policy.replace('_', '-')} of each of {self.n_layers} layers"


def _layers_of(model: nn.Module) -> nn.ModuleList:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(
            f"enable_checkpointing needs a model with a non-empty `layers` ModuleList (the TinyTransformer), "
            f"got {type(model).__name__}"
        )
    return layers


def enable_checkpointing(
    model: nn.Module,
    every: int = 1,
    *,
    policy: str = "block",
    impl: str = "ours",
    preserve_rng_state: bool = True,
    layers: Sequence[int] | None = None,
    input_requires_grad: bool = False,
) -> nn.Module:
    """Checkpoint the model's decoder layers, in place; returns the model.

    policy "block":      segments of `every` whole layers (every=1: each layer, as HF's
                         gradient_checkpointing_enable does; every=4 of 16: the sqrt(n) plan)
           "attention":  only the attention half of each layer (norm, projections, SDPA, o_proj)
           "mlp":        only the MLP half of each layer
           "sub_blocks": both halves, each in its own checkpoint (the seed notes' layer)
    impl: "ours" (this module), "torch" (torch.utils.checkpoint, use_reentrant=False) or
          "torch-reentrant" (use_reentrant=True). Calling it again replaces the previous plan.
    layers: with policy "block" and every=1, checkpoint only these layer indices (each alone).
    input_requires_grad: make a checkpointed block's input require grad when it does not (Hugging
          Face's enable_input_require_grads), the fix for torch's reentrant trap under LoRA.
    """
    model_layers = _layers_of(model)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if not isinstance(every, int) or isinstance(every, bool) or not 1 <= every <= len(model_layers):
        raise ValueError(f"every must be an int between 1 and the number of layers ({len(model_layers)}), got {every!r}")
    only = _check_layer_subset(layers, policy, every, len(model_layers))
    disable_checkpointing(model)
    model_layers = model.layers
    ckpt = _checkpointer(impl, preserve_rng_state, input_requires_grad)
    plan = CheckpointingPlan(policy, every if policy == "block" else 1, impl, len(model_layers),
                             None if only is None else tuple(sorted(only)))
    if policy == "block":
        model.layers = SegmentedLayers(model_layers, every, ckpt, str(plan), only)
    else:
        forward = _sub_block_forward(ckpt, attention=policy in ("attention", "sub_blocks"),
                                     mlp=policy in ("mlp", "sub_blocks"))
        for layer in model_layers:
            layer.forward = types.MethodType(forward, layer)
    model._checkpointing_plan = plan
    return model


def _check_layer_subset(layers, policy: str, every: int, n_layers: int) -> frozenset | None:
    if layers is None:
        return None
    if policy != "block" or every != 1:
        raise ValueError(f"layers= picks single layers to checkpoint: it needs policy='block' and every=1, "
                         f"got policy={policy!r}, every={every}")
    chosen = list(layers)
    bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layers must be indices in [0, {n_layers}), got {bad}")
    return frozenset(chosen)


def disable_checkpointing(model: nn.Module) -> nn.Module:
    """Undo enable_checkpointing (a no-op on a model without it); returns the model."""
    layers = _layers_of(model)
    if isinstance(layers, SegmentedLayers):
        model.layers = layers.plain()
    for layer in model.layers:
        layer.__dict__.pop("forward", None)  # back to the class's forward
    model.__dict__.pop("_checkpointing_plan", None)
    return model


def checkpointing_plan(model: nn.Module) -> CheckpointingPlan | None:
    """The plan enable_checkpointing applied, or None."""
    return model.__dict__.get("_checkpointing_plan")

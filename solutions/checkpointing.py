"""Chapter 2 reference solutions: gradient checkpointing from scratch, the whiteboard version.

Short and commented, the way you would write it in an interview. The hardened version (CUDA RNG per
device, clear errors for torch.autograd.grad, the model plans) lives in efftrain_lib/checkpointing.py.
Grade these with
    python -m efftrain_lib.grade checkpointing --impl solutions
"""

import torch
import torch.nn as nn


# Exercise 2.1: checkpoint ------------------------------------------------------------------------
def _autocast_state():
    """Autocast on/off and dtype for CPU (and CUDA when present): the recompute must replay them."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in devices]


class CheckpointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, preserve_rng_state, anchor, *tensors):
        # `run` calls fn with these tensors put back among the non-tensor arguments and kwargs.
        ctx.run = run
        ctx.preserve_rng_state = preserve_rng_state
        if preserve_rng_state:  # dropout in fn must draw the same mask when we recompute
            ctx.cpu_rng = torch.get_rng_state()
            ctx.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        ctx.autocast = _autocast_state()
        ctx.save_for_backward(*tensors)  # only the inputs; autograd frees them after backward
        with torch.no_grad():  # no graph: nothing inside fn is kept for backward
            return run(*tensors)

    @staticmethod
    def backward(ctx, *grad_outputs):
        try:
            saved = ctx.saved_tensors
        except RuntimeError:  # freed by the first backward
            raise RuntimeError("checkpoint: backward ran through this checkpoint a second time; "
                               "pass retain_graph=True to the first backward") from None
        # Detach: the recompute's graph must stop at the inputs (the engine carries on from there
        # with what we return). Keep requires_grad as it was: token ids cannot require grad.
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in saved]
        cuda = ctx.preserve_rng_state and ctx.cuda_rng is not None
        # fork_rng: whatever the recompute draws, the caller's RNG stream continues as before.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else [],
                                   enabled=ctx.preserve_rng_state):
            if ctx.preserve_rng_state:
                torch.set_rng_state(ctx.cpu_rng)
                if cuda:
                    torch.cuda.set_rng_state_all(ctx.cuda_rng)
            # backward runs with grad mode off: switch it on, and replay autocast as it was.
            with torch.enable_grad():
                with _Autocast(ctx.autocast):
                    outputs = ctx.run(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        # Several outputs: back-propagate those that require grad and received a gradient.
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs)
                 if torch.is_tensor(o) and o.requires_grad and g is not None]
        # backward (not autograd.grad): parameters inside fn accumulate their .grad too.
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, None, None) + tuple(t.grad if t.requires_grad else None for t in inputs)


class _Autocast:
    def __init__(self, states):
        self.contexts = [torch.autocast(d, dtype=dtype, enabled=on) for d, on, dtype in states]

    def __enter__(self):
        for c in self.contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    """fn(*args, **kwargs), keeping only the inputs; fn is re-run in backward."""
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    if not torch.is_grad_enabled():  # evaluation: nothing will be saved anyway
        return fn(*args, **kwargs)
    # Tensors (positional or keyword) go through autograd; everything else waits in `values`.
    values = list(args) + list(kwargs.values())
    slots = [i for i, v in enumerate(values) if torch.is_tensor(v)]
    tensors = [values[i] for i in slots]
    for i in slots:
        values[i] = None  # do not keep the tensors alive outside save_for_backward

    def run(*ts):
        filled = list(values)
        for i, t in zip(slots, ts):
            filled[i] = t
        return fn(*filled[: len(args)], **dict(zip(kwargs, filled[len(args):])))

    # If no input requires grad (frozen embeddings + LoRA), the output would be cut from the graph
    # and the parameters inside fn would get no gradient: pass a zero-size tensor that does.
    anchor = None if any(t.requires_grad for t in tensors) else torch.empty(0, requires_grad=True)
    return CheckpointFunction.apply(run, preserve_rng_state, anchor, *tensors)


# Exercise 2.2: checkpoint_sequential ---------------------------------------------------------------
def checkpoint_sequential(functions, segments, input):
    """Run functions in order, split like torch.utils.checkpoint.checkpoint_sequential: segments-1
    chunks of len // segments functions are checkpointed; the LAST chunk (with the remainder) runs
    normally, since backward starts there at once. segments=1 checkpoints nothing."""
    functions = list(functions.children()) if isinstance(functions, nn.Sequential) else list(functions)
    n = len(functions)
    if not isinstance(segments, int) or not 1 <= segments <= n:
        raise ValueError(f"segments must be an int between 1 and the number of functions ({n}), got {segments!r}")
    size = n // segments

    def run_range(start, stop):
        def run(x):
            for f in functions[start:stop]:
                x = f(x)
            return x
        return run

    x = input
    for start in range(0, size * (segments - 1), size):
        x = checkpoint(run_range(start, start + size), x)
    return run_range(size * (segments - 1), n)(x)  # the last segment: not checkpointed


# Exercise 2.3: non-reentrant checkpoint, with saved-tensor hooks ---------------------------------------
def _recompute(fn, args, kwargs, rng, autocast, saved):
    """Run fn again as the forward ran it, appending every tensor it saves for backward to `saved`, in order."""
    def same(v):
        # Detached (this graph is thrown away), requires_grad as it was: an op saves an input only if another
        # input's gradient needs it, so the recompute then saves exactly what the forward saved.
        return v.detach().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v

    with torch.random.fork_rng(devices=[], enabled=rng is not None):  # the caller's RNG is put back after
        if rng is not None:
            torch.set_rng_state(rng)  # the same dropout masks as the forward
        with torch.enable_grad(), _Autocast(autocast), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn(*[same(v) for v in args], **{k: same(v) for k, v in kwargs.items()})


def checkpoint_non_reentrant(fn, *args, preserve_rng_state=True, **kwargs):
    """fn(*args, **kwargs) run normally, its graph recorded, but every tensor it saves for backward dropped:
    the pack hook keeps an index instead. The first unpack (in backward) recomputes fn with the forward's RNG
    and autocast state, collecting what it saves; each unpack returns the one at its index.
    No Function, no nested backward: parameters inside fn are ordinary nodes of the graph, so they get their
    gradients with or without an input that requires grad, torch.autograd.grad reaches them, and a hook on a
    parameter used inside and outside fires once (as in torch's use_reentrant=False)."""
    if not callable(fn):
        raise TypeError(f"checkpoint_non_reentrant: fn must be callable, got {type(fn).__name__}")
    if not torch.is_grad_enabled():  # evaluation: nothing will be saved anyway
        return fn(*args, **kwargs)
    rng = torch.get_rng_state() if preserve_rng_state else None
    autocast = _autocast_state()
    recomputed = []  # what the recompute saved, in order: filled by the first unpack
    packed = 0

    def pack(tensor):
        nonlocal packed
        packed += 1
        return packed - 1  # an index: the tensor itself is not kept

    def unpack(index):
        if not recomputed:
            _recompute(fn, args, kwargs, rng, autocast, recomputed)
        return recomputed[index]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return fn(*args, **kwargs)

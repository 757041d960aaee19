"""Helpers of the checkpointing grader (efftrain_lib/grading/checkpointing.py and, for Exercise 2.3,
checkpointing_nonreentrant.py): tolerances, the errors that name a classic mistake, the spy that catches a
delegation to torch.utils.checkpoint, the tiny networks the checks run and the reference runs (fn directly,
torch.utils.checkpoint). The checks, in report order, are in the grader modules."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.utils.checkpoint as _torch_ckpt_module
from efftrain_lib.grading.combinations import product
from efftrain_lib.meter import SavedTensorCounter, profiler_peak_bytes
from torch.utils.checkpoint import checkpoint as torch_checkpoint
from torch.utils.checkpoint import checkpoint_sequential as torch_checkpoint_sequential

OUT_ATOL = 1e-6
GRAD_ATOL = 1e-5

# Runtime errors that name a classic mistake, and what to say about them.
_KNOWN_ERRORS = [
    ("does not require grad and does not have a grad_fn",
     "the recompute ran without grad enabled: backward runs with grad mode off, so wrap the recompute in "
     "torch.enable_grad()"),
    ("only tensors of floating point",
     "every saved input was made to require grad (the seed notes' bug): integer inputs such as token ids "
     "cannot; detach and keep requires_grad as it was"),
    ("save_for_backward can only save",
     "non-tensor arguments were passed to save_for_backward: save only the tensors, keep the rest aside"),
    ("unexpected keyword argument",
     "keyword arguments were not passed through correctly to fn"),
    ("mismatch in dtype",
     "the autocast state was not replayed in the recompute: it ran in another precision than the forward"),
    ("expected m1 and m2 to have the same dtype",
     "the autocast state was not replayed in the recompute (or not its dtype): the recomputed tensors have "
     "another precision than the forward's"),
    ("one of the differentiated tensors does not require grad",
     "torch.autograd.grad was asked for the gradient of an input that does not require grad; use "
     "torch.autograd.backward(outputs, grad_outputs) and return None for such inputs"),
]

@contextlib.contextmanager
def _spy_on_torch_checkpoint():
    """Record calls into torch.utils.checkpoint's two implementations while the block runs.

    Both modes go through a module-level name looked up at call time (the non-reentrant generator,
    CheckpointFunction.apply), so wrapping them sees calls made through any import of checkpoint."""
    calls: list[str] = []
    module = _torch_ckpt_module
    generator = getattr(module, "_checkpoint_without_reentrant_generator", None)
    apply = module.CheckpointFunction.apply

    def spy_generator(*args, **kwargs):
        calls.append("torch.utils.checkpoint (use_reentrant=False)")
        return generator(*args, **kwargs)

    def spy_apply(*args, **kwargs):
        calls.append("torch.utils.checkpoint (use_reentrant=True)")
        return apply(*args, **kwargs)

    if generator is not None:
        module._checkpoint_without_reentrant_generator = spy_generator
    module.CheckpointFunction.apply = spy_apply
    try:
        yield calls
    finally:
        if generator is not None:
            module._checkpoint_without_reentrant_generator = generator
        del module.CheckpointFunction.apply  # back to the inherited classmethod


def _from_scratch(run) -> tuple[bool, str]:
    with _spy_on_torch_checkpoint() as calls:
        run()
    if calls:
        return False, f"your code called {calls[0]} ({len(calls)} call(s))"
    return True, "no call into torch.utils.checkpoint"

def _maxdiff(a, b) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def _mlp(dropout: float = 0.0, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(dropout), nn.GELU(), nn.Linear(16, 8))


def _leaf(*shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def _run(ckpt, module, x, seed=3):
    """out, loss-grads of module's parameters, x.grad, for out = ckpt(module, x); loss = sum(out^2)."""
    module.zero_grad(set_to_none=True)
    x.grad = None
    torch.manual_seed(seed)
    out = ckpt(module, x)
    out.pow(2).sum().backward()
    return out, [p.grad for p in module.parameters()], x.grad


def _direct(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def _torch(fn, *args, **kwargs):
    return torch_checkpoint(fn, *args, use_reentrant=False, **kwargs)


def _is_tensor_close(a, b, atol) -> bool:
    return torch.is_tensor(a) and a.shape == b.shape and _maxdiff(a, b) <= atol


def _blocks(n: int, dropout: float = 0.2, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 8))
                           for _ in range(n)])


def _torch_sequential(functions, segments, x):
    return torch_checkpoint_sequential(functions, segments, x, use_reentrant=False)


# ------------------------------------------------------------------------ options together --
AUTOCAST = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# checkpoint's options, all combined (2 x 3 x 2 x 2 x 2 = 48 small runs: well under a second)
CHECKPOINT_OPTIONS = {"dropout": [0.0, 0.5], "autocast": list(AUTOCAST), "input": ["requires grad", "frozen"],
                      "call": ["positional", "keyword tensor"], "outputs": ["one", "tuple"]}


def autocast_context(name: str):
    dtype = AUTOCAST[name]
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def combination_net(dropout: float) -> nn.Sequential:
    """Wide enough (16 x 128 hidden values) that what a forward keeps dwarfs the RNG state a checkpoint keeps."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 128), nn.GELU(), nn.Dropout(dropout), nn.Linear(128, 8))


def _input(combo: dict, *shape) -> torch.Tensor:
    """The combination's input: a leaf that requires grad, or a tensor that does not (a frozen embedding's output)."""
    x = _leaf(*shape)
    return x if combo.get("input", "requires grad") == "requires grad" else x.detach()


def combination_forward(ckpt, combo: dict, net: nn.Module):
    """ckpt(fn, x, 2.0[, bias=b]) under the combination's autocast, fn returning one output or a tuple
    (out, out.sum(-1), "aux"); x requires grad or not; b a keyword tensor that requires grad.
    Returns (result, x, b)."""
    x = _input(combo, 16, 8)
    bias = _leaf(8, seed=2) if combo.get("call") == "keyword tensor" else None
    several = combo.get("outputs") == "tuple"

    def fn(t, scale, *, bias=None):
        out = net(t) * scale
        if bias is not None:
            out = out + bias
        return (out, out.sum(-1), "aux") if several else out

    with autocast_context(combo.get("autocast", "off")):
        result = ckpt(fn, x, 2.0) if bias is None else ckpt(fn, x, 2.0, bias=bias)
    return result, x, bias


def combination_run(ckpt, combo: dict, net: nn.Module, *, grad_api: str = "backward", seed: int = 3):
    """One forward and backward through ckpt under the combination (the same RNG seed for every ckpt): the
    output and the gradients of the parameters, of x when it requires grad and of the keyword tensor.
    grad_api="autograd.grad" asks torch.autograd.grad for them instead of reading .grad."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    result, x, bias = combination_forward(ckpt, combo, net)
    out, second = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
    loss = out.float().pow(2).sum() + (3 * second.float().sum() if second is not None else 0)
    wanted = list(net.parameters()) + [t for t in (x, bias) if t is not None and t.requires_grad]
    if grad_api == "autograd.grad":
        grads = list(torch.autograd.grad(loss, wanted, allow_unused=True))
    else:
        loss.backward()
        grads = [t.grad for t in wanted]
    return out.detach(), grads


def differs(got, ref) -> str | None:
    """None when output and gradients agree within OUT_ATOL and GRAD_ATOL; else what differs."""
    (out, grads), (ref_out, ref_grads) = got, ref
    if out.shape != ref_out.shape or out.dtype != ref_out.dtype or _maxdiff(out, ref_out) > OUT_ATOL:
        diff = _maxdiff(out, ref_out) if out.shape == ref_out.shape else float("inf")
        return f"output {out.dtype} differs from the reference's {ref_out.dtype} (max |diff| {diff:.2e})"
    missing = sum(g is None for g in grads)
    if missing:
        return f"{missing} of {len(grads)} gradients are None"
    diff = max(_maxdiff(g, r) for g, r in zip(grads, ref_grads))
    return f"gradients max |diff| {diff:.2e}" if diff > GRAD_ATOL else None


def kept_saved_bytes(ckpt, combo: dict, net: nn.Module) -> tuple[int, int]:
    """(bytes saved for backward and alive after the forward, bytes of the tensor inputs): SavedTensorCounter's
    exact CPU accounting, parameters excluded."""
    with SavedTensorCounter(net) as counter:
        result, x, bias = combination_forward(ckpt, combo, net)
        kept = counter.activation_bytes
        del result
    return kept, sum(t.numel() * t.element_size() for t in (x, bias) if t is not None)


def kept_allocated_bytes(ckpt, combo: dict, net: nn.Module) -> int:
    """Bytes the CPU allocator still holds after the forward, above what it held before (torch.profiler): what a
    checkpoint keeps, whatever its hooks hide from saved-tensor accounting, plus the output."""
    results = []
    kept = profiler_peak_bytes(lambda: results.append(combination_forward(ckpt, combo, net))).net_bytes
    del results
    return kept


# checkpoint_sequential's options, all combined (2 x 3 x 2 x 2 = 24): 5 blocks, so 2 segments leave a remainder
SEQUENTIAL_OPTIONS = {"functions": ["nn.Sequential", "list"], "segments": [1, 2, 5],
                      "input": ["requires grad", "frozen"], "dropout": [0.0, 0.2]}


def _sequential_case(combo: dict):
    blocks = _blocks(5, dropout=combo["dropout"])
    functions = blocks if combo["functions"] == "nn.Sequential" else list(blocks)
    return blocks, functions, _input(combo, 4, 8)


def sequential_run(seq, combo: dict, seed: int = 5):
    """checkpoint_sequential (yours or torch's) under the combination: the output and every gradient."""
    blocks, functions, x = _sequential_case(combo)
    torch.manual_seed(seed)
    out = seq(functions, combo["segments"], x)
    out.pow(2).sum().backward()
    return out.detach(), [p.grad for p in blocks.parameters()] + ([x.grad] if x.requires_grad else [])


def sequential_kept_bytes(seq, combo: dict) -> int:
    blocks, functions, x = _sequential_case(combo)
    with SavedTensorCounter(blocks) as counter:
        out = seq(functions, combo["segments"], x)
        kept = counter.activation_bytes
        del out
    return kept


# ---------------------------------------------------------------- the references, once per process --
_references: dict = {}
KEPT_SLACK = 1024  # bytes a from-scratch checkpoint may keep beyond torch's (its own bookkeeping)


def reference(kind: str, combo: dict):
    """torch.utils.checkpoint's result for a combination ("checkpoint": output and gradients; "checkpoint kept":
    the allocator's bytes after the forward; "sequential", "sequential kept": the same for checkpoint_sequential,
    kept as saved-tensor bytes). Computed once per process: the grader's prepare() computes them all, and every
    grade (a fork of that process) finds them."""
    key = (kind, tuple(combo.items()))
    if key not in _references:
        if kind == "checkpoint":
            _references[key] = combination_run(_torch, combo, combination_net(combo["dropout"]))
        elif kind == "checkpoint kept":
            _references[key] = kept_allocated_bytes(_torch, combo, combination_net(combo["dropout"]))
        elif kind == "sequential":
            _references[key] = sequential_run(_torch_sequential, combo)
        else:
            _references[key] = sequential_kept_bytes(_torch_sequential, combo)
    return _references[key]


def compute_references() -> None:
    for combo in product(CHECKPOINT_OPTIONS):
        reference("checkpoint", combo)
        reference("checkpoint kept", combo)
    for combo in product(SEQUENTIAL_OPTIONS):
        reference("sequential", combo)
        reference("sequential kept", combo)

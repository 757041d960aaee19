"""Graders for Chapter 2 (gradient checkpointing): exercises 2.1-2.3 in <impl>/checkpointing.py.

Behaviour only, through the exercise API (checkpoint(fn, *args, preserve_rng_state=True, **kwargs),
checkpoint_sequential(functions, segments, input) and checkpoint_non_reentrant(fn, *args, ...)), so any
correct implementation passes. The reference is torch.utils.checkpoint with use_reentrant=False (torch 2.13)
and running fn directly; kept memory is the exact CPU accounting of efftrain_lib.meter.SavedTensorCounter
(bytes saved for backward after the forward, parameters excluded) or, for 2.3, whose hooks hide what it
saves from that accounting, the CPU allocator's bytes still held after the forward (torch.profiler).
Each exercise also has a check of its options together: every combination of dropout, autocast dtype
(off, bf16, fp16), an input that does or does not require grad, a keyword tensor and several outputs (2.1,
2.3, with backward and torch.autograd.grad), of nn.Sequential or a list, segments, frozen input and dropout
(2.2): outputs, gradients and kept memory against torch's, and a failure names the combination.
The 2.3 checks live in checkpointing_nonreentrant.py; this module registers them after 2.1 and 2.2.

Tolerances (float32, tiny shapes, values of order 1):
  outputs vs fn(*args) / torch                 max |diff| <= 1e-6 (the same ops: usually exactly 0)
  gradients vs the direct run / torch          max |diff| <= 1e-5
  a wrong RNG replay is told apart by          max |diff| > 1e-3 with the forward still equal
  kept bytes vs torch.utils.checkpoint         equal, to the byte (2.2); at most the tensor inputs (2.1);
                                               at most torch's + 1 KiB of the allocator's (2.3)
"Built from scratch" checks spy on torch.utils.checkpoint's two implementations while the learner's code
runs: delegating to the reference is caught and named.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from efftrain_lib.grading import Checks, failed, passed
from efftrain_lib.grading.checkpointing_support import (
    _KNOWN_ERRORS, CHECKPOINT_OPTIONS, GRAD_ATOL, OUT_ATOL, SEQUENTIAL_OPTIONS, _blocks, _direct, _from_scratch,
    _is_tensor_close, _leaf, _maxdiff, _mlp, _run, _torch, _torch_sequential, combination_net, combination_run,
    compute_references, differs, kept_saved_bytes, reference, sequential_kept_bytes, sequential_run,
)
from efftrain_lib.grading.checkpointing_nonreentrant import (  # noqa: F401 - registered below, by name
    NON_REENTRANT_CHECKS, nr_autocast_replayed, nr_autograd_grad_reaches_parameters, nr_built_from_scratch,
    nr_callers_rng_stream_untouched, nr_dropout_mask_same_in_recompute, nr_forward_keeps_only_inputs,
    nr_frozen_input_parameters_get_gradients, nr_gradients_equal_direct_run, nr_hook_fires_once,
    nr_options_together,
)
from efftrain_lib.grading.combinations import check_together, product
from efftrain_lib.meter import SavedTensorCounter

EXERCISES = {
    "2.1": "checkpoint",
    "2.2": "checkpoint_sequential",
    "2.3": "checkpoint_non_reentrant (saved-tensor hooks)",
}
CHECKS = Checks()


def prepare() -> None:
    """torch's results for every combination the checks compare with, once per grading process (with
    torch.profiler's own start, about 3 s): every grade, a fork of this process, finds them computed."""
    compute_references()


def _guard(check):
    """Turn a RuntimeError/TypeError that names a classic mistake into a failure that says so.
    NotImplementedError propagates: the harness reports it as a stub."""

    @functools.wraps(check)
    def run(impl):
        try:
            return check(impl)
        except NotImplementedError:
            raise
        except (RuntimeError, TypeError, ValueError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
            for needle, hint in _KNOWN_ERRORS:
                if needle in str(exc).lower():
                    return failed(f"{type(exc).__name__}: {message}", hint)
            raise

    return run


def _check(exercise: str, name: str, hint: str):
    def decorator(func):
        CHECKS.add(exercise, name, hint)(_guard(func))
        return func

    return decorator


# ----------------------------------------------------------------- Exercise 2.1: checkpoint --
@_check("2.1", "returns what fn returns", hint="return the outputs of fn from forward (the Function's apply)")
def returns_what_fn_returns(impl):
    net = _mlp()
    x = _leaf(4, 8)
    out = impl.checkpoint(net, x)
    if out is None:
        return failed("checkpoint returned None", "return what fn returns: the Function's forward must return "
                                                   "fn's outputs, and checkpoint must return apply(...)")
    if not torch.is_tensor(out) or out.shape != (4, 8):
        return failed(f"checkpoint returned {type(out).__name__} {getattr(out, 'shape', '')}; expected the "
                      f"tensor fn returns, shape (4, 8)", "return what fn returns, nothing else")
    diff = _maxdiff(out, net(x))
    if diff > OUT_ATOL:
        return failed(f"max |diff| {diff:.2e} vs fn(x)", "the output must be fn(*args, **kwargs) itself")
    if not out.requires_grad:
        return failed("the output does not require grad: it is cut from the graph",
                      "return the output of a torch.autograd.Function's apply, so backward reaches it")
    return passed(f"max |diff| {diff:.0e} vs fn(x); output requires grad")


@_check("2.1", "input gradients equal a direct run",
        hint="backward: recompute on detached inputs, torch.autograd.backward(outputs, grad_outputs), "
             "return the inputs' .grad")
def input_gradients_equal_direct_run(impl):
    net = _mlp()
    x = _leaf(4, 8)
    _, _, ref = _run(_direct, net, x)
    ref = ref.clone()
    _, _, got = _run(impl.checkpoint, net, x)
    if got is None:
        return failed("x.grad is None after backward through checkpoint",
                      "return the gradients of the (detached) inputs from backward, in input order")
    diff = _maxdiff(got, ref)
    if diff > GRAD_ATOL:
        ratio = (got.flatten() @ ref.flatten() / (ref.flatten() @ ref.flatten())).item()
        if abs(ratio - 2) < 1e-3:
            return failed(f"x.grad is {ratio:.2f}x the direct run's (max |diff| {diff:.2e})",
                          "gradient counted twice: inputs not detached before the recompute, so the inner "
                          "backward accumulated into x.grad and autograd then added your returned gradient "
                          "again; detach the saved inputs first")
        return failed(f"x.grad max |diff| {diff:.2e} vs the direct run",
                      "the inputs' gradients must come from a recompute of fn on the saved inputs")
    return passed(f"x.grad max |diff| {diff:.0e} vs the direct run")


@_check("2.1", "parameters inside fn receive gradients",
        hint="call torch.autograd.backward(outputs, grad_outputs) in backward, so that parameters accumulate .grad")
def parameters_inside_fn_get_gradients(impl):
    net = _mlp()
    x = _leaf(4, 8)
    _, ref, _ = _run(_direct, net, x)
    ref = [g.clone() for g in ref]
    _, got, _ = _run(impl.checkpoint, net, x)
    missing = [name for (name, _), g in zip(net.named_parameters(), got) if g is None]
    if missing:
        return failed(f"parameter gradients lost: .grad is None for {missing}",
                      "parameter gradients lost: torch.autograd.grad(outputs, inputs) returns only the inputs' "
                      "gradients; call torch.autograd.backward(outputs, grad_outputs) so the parameters "
                      "inside fn accumulate theirs")
    diff = max(_maxdiff(a, b) for a, b in zip(got, ref))
    if diff > GRAD_ATOL:
        return failed(f"parameter gradients max |diff| {diff:.2e} vs the direct run",
                      "parameters must get exactly the gradients of a direct run (accumulated once)")
    return passed(f"parameter gradients max |diff| {diff:.0e} vs the direct run")


@_check("2.1", "forward keeps only the inputs",
        hint="run fn under torch.no_grad() in forward and save only the inputs")
def forward_keeps_only_inputs(impl):
    net = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 8))
    x = _leaf(16, 8)
    kept = {}
    for name, ckpt in (("yours", impl.checkpoint), ("torch", _torch), ("plain", _direct)):
        with SavedTensorCounter(net) as counter:
            out = ckpt(net, x)
            kept[name] = counter.activation_bytes
            del out
    detail = (f"kept {kept['yours']:,} bytes after forward; torch.utils.checkpoint keeps {kept['torch']:,} "
              f"(the input), no checkpoint {kept['plain']:,}")
    if kept["yours"] > kept["torch"]:
        return failed(detail, "the forward keeps its graph anyway: run fn under torch.no_grad() inside the "
                              "Function's forward and keep only the inputs; recompute in backward")
    return passed(detail)


@_check("2.1", "dropout: same mask in the recompute (RNG state restored)",
        hint="stash torch.get_rng_state() in forward; torch.set_rng_state(...) before the recompute")
def dropout_mask_same_in_recompute(impl):
    net = _mlp(dropout=0.5)
    x = _leaf(16, 8)
    out_ref, ref, xref = _run(_direct, net, x)
    ref = [g.clone() for g in ref] + [xref.clone()]
    out, got, xg = _run(impl.checkpoint, net, x)
    got = list(got) + [xg]
    if any(g is None for g in got):
        return failed("some gradients are None with dropout inside fn", "every parameter and x need gradients")
    forward = _maxdiff(out, out_ref)
    diff = max(_maxdiff(a, b) for a, b in zip(got, ref))
    if diff > GRAD_ATOL:
        same = "the same forward output" if forward <= OUT_ATOL else f"forward max |diff| {forward:.2e}"
        return failed(f"with dropout 0.5: {same} but gradients max |diff| {diff:.2e} vs the direct run",
                      "RNG not restored: the recompute drew a different dropout mask (same forward, wrong "
                      "gradients); stash torch.get_rng_state() in forward and restore it before recomputing")
    return passed(f"with dropout 0.5: gradients max |diff| {diff:.0e} vs the direct run")


@_check("2.1", "the caller's RNG stream is left as it was",
        hint="restore the RNG state inside torch.random.fork_rng(), which puts the caller's state back after")
def callers_rng_stream_untouched(impl):
    net = _mlp(dropout=0.5)
    x = _leaf(16, 8)
    torch.manual_seed(11)
    out = impl.checkpoint(net, x)
    torch.rand(100)  # the rest of the model's forward draws numbers too (its own dropout)
    expected = torch.get_rng_state()
    out.sum().backward()
    if not torch.equal(torch.get_rng_state(), expected):
        return failed("after backward the global RNG is not where the forward left it",
                      "RNG rewound and left so: the recompute set the RNG state back to the forward's and did "
                      "not restore the caller's; do it inside torch.random.fork_rng()")
    return passed("RNG state after backward == RNG state after forward")


@_check("2.1", "keyword and non-tensor arguments",
        hint="pass *args and **kwargs to fn in forward and in the recompute; only tensors go through autograd")
def keyword_and_non_tensor_arguments(impl):
    def fn(h, scale, *, bias=None, mode="add"):
        out = h * scale
        if bias is not None:
            out = out + bias if mode == "add" else out - bias
        return out

    h, bias = _leaf(3, 4, seed=1), _leaf(4, seed=2)

    def run(ckpt, **kwargs):
        h.grad = bias.grad = None
        out = ckpt(fn, h, 3.0, **kwargs)
        out.pow(2).sum().backward()
        return out, h.grad, bias.grad

    # First a non-tensor positional argument alone, then tensor and str keyword arguments.
    ref = run(_direct)[1].clone()
    got = run(impl.checkpoint)[1]
    if got is None or not _is_tensor_close(got, ref, GRAD_ATOL):
        return failed("fn(h, 3.0): the gradient of h differs from the direct call",
                      "non-tensor arguments must pass through to fn unchanged")
    ref = [t.clone() for t in run(_direct, bias=bias, mode="sub")]
    got = run(impl.checkpoint, bias=bias, mode="sub")
    if not _is_tensor_close(got[0], ref[0], OUT_ATOL):
        return failed("fn(h, 3.0, bias=bias, mode='sub'): the output differs from the direct call",
                      "keyword arguments were lost: pass **kwargs on to fn, in forward and in the recompute")
    for name, g, r in (("h", got[1], ref[1]), ("bias (keyword)", got[2], ref[2])):
        if g is None or not _is_tensor_close(g, r, GRAD_ATOL):
            what = "None" if g is None else f"max |diff| {_maxdiff(g, r):.2e}"
            return failed(f"gradient of {name}: {what} vs the direct call",
                          "tensors passed as keyword arguments need gradients too: route them through the "
                          "Function like positional tensors, and pass keyword arguments on in the recompute")
    return passed("int and str arguments passed through; h and the keyword tensor get the direct call's gradients")


@_check("2.1", "integer inputs (token ids) stay as they are",
        hint="detach the saved inputs and keep requires_grad as it was (t.detach().requires_grad_(t.requires_grad))")
def integer_inputs_stay_as_they_are(impl):
    emb = nn.Embedding(10, 4)
    ids = torch.tensor([[1, 2, 2, 7]])

    def run(ckpt):
        emb.zero_grad(set_to_none=True)
        out = ckpt(lambda i: emb(i) * 2, ids)
        if not out.requires_grad:
            return "cut"
        out.pow(2).sum().backward()
        return emb.weight.grad

    ref = run(_direct).clone()
    got = run(impl.checkpoint)
    if isinstance(got, str):
        return failed("checkpoint(lambda i: emb(i) * 2, ids): the output does not require grad, the embedding "
                      "gets no gradient",
                      "no input requires grad here (token ids), so the Function's output is cut from the graph "
                      "(the reentrant trap): pass a zero-size tensor with requires_grad=True through apply")
    if got is None or _maxdiff(got, ref) > GRAD_ATOL:
        return failed("embedding gradient through checkpoint(lambda i: emb(i) * 2, ids) differs from the direct "
                      "run" if got is not None else "embedding.weight.grad is None",
                      "integer inputs must pass through untouched, and parameters inside fn must get gradients")
    return passed("token ids pass through; embedding gradient equals the direct run's")


@_check("2.1", "frozen input: parameters inside still get gradients",
        hint="when no input requires grad, pass an extra zero-size tensor that does through the Function")
def frozen_input_parameters_still_get_gradients(impl):
    lin = nn.Linear(8, 8)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))  # a frozen embedding's output

    def run(ckpt):
        lin.zero_grad(set_to_none=True)
        out = ckpt(lin, x)
        if not out.requires_grad:
            return None
        out.pow(2).sum().backward()
        return lin.weight.grad

    ref = run(_direct).clone()
    got = run(impl.checkpoint)
    if got is None:
        return failed("input with requires_grad=False: the output does not require grad, lin.weight.grad stays None",
                      "the reentrant trap (LoRA on a frozen embedding): with no input requiring grad the "
                      "Function's output is cut from the graph; pass a zero-size tensor with requires_grad=True "
                      "through apply as an extra input")
    diff = _maxdiff(got, ref)
    if diff > GRAD_ATOL:
        return failed(f"weight gradient max |diff| {diff:.2e} vs the direct run", "recompute and back-propagate once")
    return passed(f"frozen input: weight gradient max |diff| {diff:.0e} vs the direct run")


@_check("2.1", "several outputs",
        hint="fn may return a tuple: back-propagate every output that requires grad and received a gradient")
def several_outputs(impl):
    lin = nn.Linear(8, 8)
    x = _leaf(4, 8)

    def fn(t):
        h = lin(t)
        return h.tanh(), h.sum(dim=-1), "aux"

    def run(ckpt):
        lin.zero_grad(set_to_none=True)
        x.grad = None
        a, b, tag = ckpt(fn, x)
        (a.pow(2).sum() + 3 * b.sum()).backward()
        return tag, x.grad, lin.weight.grad

    ref = run(_direct)
    ref = (ref[0], ref[1].clone(), ref[2].clone())
    got = run(impl.checkpoint)
    if got[0] != "aux":
        return failed(f"third output {got[0]!r}, expected 'aux'", "return all of fn's outputs, non-tensors too")
    if got[1] is None or got[2] is None:
        return failed("x.grad or weight.grad is None with two tensor outputs", "back-propagate every output")
    diff = max(_maxdiff(got[1], ref[1]), _maxdiff(got[2], ref[2]))
    if diff > GRAD_ATOL:
        return failed(f"two outputs both in the loss: gradients max |diff| {diff:.2e} vs the direct run",
                      "only the first output was back-propagated: pass every output that requires grad, with its "
                      "grad_output, to torch.autograd.backward")
    return passed(f"tuple (tensor, tensor, str): gradients max |diff| {diff:.0e} vs the direct run")


@_check("2.1", "autocast state replayed",
        hint="record torch.is_autocast_enabled / get_autocast_dtype in forward and re-enter torch.autocast for the recompute")
def autocast_state_replayed(impl):
    lin = nn.Linear(16, 16)
    x = _leaf(4, 16)

    def run(ckpt):
        lin.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ckpt(lin, x)
        out.float().pow(2).sum().backward()
        return out.dtype, lin.weight.grad, x.grad

    ref = run(_torch)
    ref = (ref[0], ref[1].clone(), ref[2].clone())
    got = run(impl.checkpoint)
    if got[1] is None or got[2] is None:
        return failed("under bf16 autocast some gradients are None", "back-propagate the recompute")
    diff = max(_maxdiff(got[1], ref[1]), _maxdiff(got[2], ref[2]))
    if got[0] != ref[0] or diff > GRAD_ATOL:
        return failed(f"under bf16 autocast: output {got[0]}, gradients max |diff| {diff:.2e} vs "
                      "torch.utils.checkpoint",
                      "the autocast state was not replayed: the recompute ran in fp32 while the forward ran in "
                      "bf16; record it in forward and wrap the recompute in torch.autocast(...)")
    return passed(f"under bf16 autocast: gradients max |diff| {diff:.0e} vs torch.utils.checkpoint")


@_check("2.1", "backward twice raises a clear error",
        hint="keep the inputs with ctx.save_for_backward: autograd frees them after backward and refuses a second")
def backward_twice_raises_clear_error(impl):
    lin = nn.Linear(4, 4)
    x = _leaf(2, 4)
    loss = impl.checkpoint(lin, x).sum()
    loss.backward()
    try:
        loss.backward()
    except RuntimeError as exc:
        return passed(f"second backward raised RuntimeError: {str(exc).splitlines()[0][:120]}")
    return failed("a second backward through the same checkpoint ran without error (and added the gradients again)",
                  "inputs kept on ctx instead of ctx.save_for_backward: autograd cannot free them or refuse a second "
                  "backward; use ctx.save_for_backward and read ctx.saved_tensors")


@_check("2.1", "a non-callable fn raises a clear error",
        hint="check callable(fn) first and raise TypeError naming fn")
def non_callable_fn_raises_clear_error(impl):
    for bad in (3, None):
        try:
            impl.checkpoint(bad, _leaf(2, 4))
        except NotImplementedError:
            raise
        except (TypeError, ValueError) as exc:
            if "fn" not in str(exc) or "callable" not in str(exc):
                return failed(f"checkpoint({bad!r}, x) raised {type(exc).__name__}: {exc}",
                              "no input validation: say that fn must be callable, naming fn and what was given")
            continue
        except Exception as exc:  # noqa: BLE001
            return failed(f"checkpoint({bad!r}, x) raised {type(exc).__name__}: {exc}",
                          "no input validation: raise TypeError('checkpoint: fn must be callable, got ...')")
        else:
            return failed(f"checkpoint({bad!r}, x) did not raise", "no input validation: check callable(fn)")
    return passed("checkpoint(3, x) and checkpoint(None, x) raise, naming fn")


@_check("2.1", "checkpoint is built from scratch (no torch.utils.checkpoint)",
        hint="write the autograd.Function yourself; torch.utils.checkpoint is the reference you are compared to")
def checkpoint_built_from_scratch(impl):
    net = _mlp(dropout=0.5)
    x = _leaf(4, 8)
    ok, detail = _from_scratch(lambda: impl.checkpoint(net, x).sum().backward())
    if not ok:
        return failed(detail, "delegates to torch.utils.checkpoint: the exercise is to build it as your own "
                              "torch.autograd.Function (torch's is what the graders compare against)")
    return passed(detail)


# Conditions that pick out exactly the failing combinations of a classic mistake, and what to say then.
_TOGETHER_HINTS = [
    ({"autocast": "fp16"}, "the autocast dtype was not replayed, only that autocast was on: the recompute ran in "
                           "bf16 (the CPU default) while the forward ran in fp16; record torch.get_autocast_dtype "
                           "and re-enter torch.autocast with it"),
    ({"dropout": 0.5, "input": "frozen", "call": "positional"},
     "the RNG is not replayed when no input requires grad: the path with the anchor must restore the RNG state "
     "like the other one"),
    ({"input": "frozen"}, "an input that does not require grad breaks it: detach the inputs and keep requires_grad "
                          "as it was, and when no input requires grad pass an anchor through the Function"),
]


@_check("2.1", "every dropout, autocast dtype, frozen input, keyword tensor and output kind together",
        hint="each option must survive the others: the RNG and the autocast dtype replayed, a frozen input "
             "anchored, keyword tensors and every output through the Function")
def checkpoint_options_together(impl):
    def trial(combo):
        net = combination_net(combo["dropout"])
        problem = differs(combination_run(impl.checkpoint, combo, net), reference("checkpoint", combo))
        if problem is None:
            kept, inputs = kept_saved_bytes(impl.checkpoint, combo, net)
            if kept > inputs:
                problem = f"kept {kept:,} bytes after the forward, more than its tensor inputs' {inputs:,}"
        return problem

    combos = product(CHECKPOINT_OPTIONS)
    return check_together(combos, trial, f"all {len(combos)} combinations: output and gradients equal torch's, "
                          "only the inputs kept", hints=_TOGETHER_HINTS)


# ------------------------------------------------------ Exercise 2.2: checkpoint_sequential --

@_check("2.2", "output and gradients equal torch's checkpoint_sequential",
        hint="split into segments-1 chunks of n // segments functions plus a last chunk with the rest")
def sequential_matches_torch(impl):
    blocks = _blocks(10)
    x = _leaf(4, 8)
    for segments in (3, 4, 1):
        results = []
        for seq in (_torch_sequential, impl.checkpoint_sequential):
            blocks.zero_grad(set_to_none=True)
            x.grad = None
            torch.manual_seed(5)
            out = seq(blocks, segments, x)
            out.pow(2).sum().backward()
            results.append((out.detach(), [p.grad for p in blocks.parameters()] + [x.grad]))
        (ref_out, ref_grads), (out, grads) = results
        if out.shape != ref_out.shape or _maxdiff(out, ref_out) > OUT_ATOL:
            return failed(f"10 functions, {segments} segments: the output differs from torch's",
                          "functions left out or run twice: segment size n // segments, and the last segment "
                          "takes the remainder (10 functions in 3 segments: 3 + 3 + 4)")
        if any(g is None for g in grads):
            return failed(f"10 functions, {segments} segments: some gradients are None", "every function must be run")
        diff = max(_maxdiff(a, b) for a, b in zip(grads, ref_grads))
        if diff > GRAD_ATOL:
            return failed(f"10 functions, {segments} segments: gradients max |diff| {diff:.2e} vs torch's",
                          "use your checkpoint() (with the RNG replayed) for each checkpointed chunk")
    return passed("10 functions in 3, 4 and 1 segments: output and gradients equal torch's (dropout inside)")


@_check("2.2", "kept memory equals torch's (the last segment runs normally)",
        hint="checkpoint the first segments-1 chunks; run the last chunk without checkpoint")
def sequential_keeps_torchs_memory(impl):
    blocks = _blocks(8, dropout=0.0)
    x = _leaf(16, 8)
    for segments in (2, 4, 8, 1):
        kept = []
        for seq in (_torch_sequential, impl.checkpoint_sequential):
            with SavedTensorCounter(blocks) as counter:
                out = seq(blocks, segments, x)
                kept.append(counter.activation_bytes)
                del out
        ref, got = kept
        if got != ref:
            if got < ref:
                hint = ("the last segment was checkpointed too: torch's checkpoint_sequential runs the last "
                        "segment normally (backward starts there at once); or your checkpoint keeps its "
                        "inputs outside ctx.save_for_backward, where autograd cannot see them")
            else:
                hint = "not checkpointed: the first segments-1 chunks must each run inside checkpoint()"
            return failed(f"8 blocks, {segments} segments: kept {got:,} bytes after forward, torch's "
                          f"checkpoint_sequential {ref:,}", hint)
    return passed("8 blocks in 2, 4, 8, 1 segments: kept bytes equal torch's")


@_check("2.2", "bad segments raise a clear error",
        hint="raise ValueError naming segments when segments < 1 or segments > len(functions)")
def sequential_bad_segments_raise_clear_error(impl):
    blocks = _blocks(4, dropout=0.0)
    for bad in (0, 5):
        try:
            impl.checkpoint_sequential(blocks, bad, _leaf(2, 8))
        except NotImplementedError:
            raise
        except ValueError as exc:
            if "segments" not in str(exc):
                return failed(f"segments={bad} with 4 functions raised ValueError: {exc}",
                              "no input validation: the message should name segments and the allowed range")
            continue
        except Exception as exc:  # noqa: BLE001
            return failed(f"segments={bad} with 4 functions raised {type(exc).__name__}: {exc}",
                          "no input validation: raise ValueError('segments must be between 1 and ...')")
        else:
            return failed(f"segments={bad} with 4 functions did not raise",
                          "no input validation: segments must be between 1 and len(functions)")
    return passed("segments=0 and segments=5 (of 4) raise ValueError naming segments")


@_check("2.2", "checkpoint_sequential is built from scratch (no torch.utils.checkpoint)",
        hint="split the functions yourself and checkpoint each chunk with your own checkpoint()")
def sequential_built_from_scratch(impl):
    blocks = _blocks(4, dropout=0.0)
    x = _leaf(2, 8)
    ok, detail = _from_scratch(lambda: impl.checkpoint_sequential(blocks, 2, x).sum().backward())
    if not ok:
        return failed(detail, "delegates to torch.utils.checkpoint: split the functions yourself and use your "
                              "own checkpoint() for each chunk")
    return passed(detail)


@_check("2.2", "nn.Sequential or a list, every segment count, frozen input and dropout together",
        hint="take functions as an nn.Sequential or a list of callables, with any segments from 1 to len(functions), "
             "and an input that does or does not require grad")
def sequential_options_together(impl):
    def trial(combo):
        problem = differs(sequential_run(impl.checkpoint_sequential, combo), reference("sequential", combo))
        if problem is None:
            kept, ref = sequential_kept_bytes(impl.checkpoint_sequential, combo), reference("sequential kept", combo)
            if kept != ref:
                problem = f"kept {kept:,} bytes after the forward, torch's checkpoint_sequential {ref:,}"
        return problem

    hints = [({"functions": "list"}, "functions given as a list of callables fails: turn an nn.Sequential into "
                                     "list(functions.children()) and use any other sequence as it is"),
             ({"functions": "list", "segments": 1}, "segments=1 with a list fails: do not call `functions(input)` "
                                                    "as a shortcut (a list is not callable); run each function in turn")]
    combos = product(SEQUENTIAL_OPTIONS)
    return check_together(combos, trial, f"all {len(combos)} combinations: output, gradients and kept bytes equal "
                          "torch's", hints=hints)


# ------------------------------------------- Exercise 2.3: non-reentrant, with saved-tensor hooks --
# The checks are in their own module (this one would pass 600 lines); registered here, in their order, and
# imported by name so that `pytest -k` and a traceback find each under its own name in this module.
for _extra in NON_REENTRANT_CHECKS:
    _check(_extra.exercise, _extra.name, _extra.hint)(_extra.func)

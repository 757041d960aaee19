"""Checks of Exercise 2.3, checkpoint_non_reentrant(fn, *args, preserve_rng_state=True, **kwargs): checkpointing
built the way torch's use_reentrant=False is, from torch.autograd.graph.saved_tensors_hooks (the chapter names
the design, never shows it). The grader, efftrain_lib/grading/checkpointing.py, registers them after 2.1 and 2.2
(NON_REENTRANT_CHECKS, in report order) with its guard that names known runtime errors.

What sets this design apart from the reentrant one of 2.1, and is checked: the graph is recorded in the forward,
so torch.autograd.grad reaches the parameters inside fn, an input that does not require grad needs no anchor,
and a hook on a parameter used inside and outside fn fires once. Its pack hook hides what fn saves from
saved-tensor accounting, so what the forward keeps is read from the CPU allocator (torch.profiler), against
torch.utils.checkpoint(use_reentrant=False) on the same forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from efftrain_lib.grading import Checks, failed, passed
from efftrain_lib.grading.checkpointing_support import (
    CHECKPOINT_OPTIONS, GRAD_ATOL, KEPT_SLACK, OUT_ATOL, _direct, _from_scratch, _leaf, _maxdiff, _mlp, _run,
    _torch, combination_net, combination_run, differs, kept_allocated_bytes, reference,
)
from efftrain_lib.grading.combinations import check_together, product

NON_REENTRANT_CHECKS = Checks()  # this exercise's checks, in report order: the grader adds them to its own


def _check(name: str, hint: str):
    return NON_REENTRANT_CHECKS.add("2.3", name, hint)


def _grads(module: nn.Module, *tensors) -> list:
    return [p.grad for p in module.parameters()] + [t.grad for t in tensors]


@_check("output and gradients equal a direct run",
        hint="run fn normally under saved_tensors_hooks(pack, unpack); pack keeps an index, the first unpack "
             "recomputes fn and returns what the recompute saved at that index")
def nr_gradients_equal_direct_run(impl):
    net = _mlp()
    x = _leaf(4, 8)
    out_ref, *_ = _run(_direct, net, x)
    ref = [g.clone() for g in _grads(net, x)]
    try:
        out, *_ = _run(impl.checkpoint_non_reentrant, net, x)
    except (IndexError, KeyError) as exc:
        return failed(f"backward raised {type(exc).__name__}: {exc}",
                      "the recompute saved fewer tensors than the forward: backward runs with grad mode off, so "
                      "run the recompute under torch.enable_grad() (without it no op saves anything)")
    got = _grads(net, x)
    if not torch.is_tensor(out) or out.shape != out_ref.shape or _maxdiff(out, out_ref) > OUT_ATOL:
        return failed("the output differs from fn(x)", "return what fn returns: run fn inside the hooks' context")
    if any(g is None for g in got):
        return failed(f"{sum(g is None for g in got)} of {len(got)} gradients are None",
                      "every parameter inside fn and the input need gradients: the graph fn records in the forward "
                      "is the one backward runs")
    diff = max(_maxdiff(a, b) for a, b in zip(got, ref))
    if diff > GRAD_ATOL:
        return failed(f"gradients max |diff| {diff:.2e} vs the direct run",
                      "unpack must return, for each index, the tensor the recompute saved at that same index: "
                      "recompute with the inputs' requires_grad as it was, so the same tensors are saved in the "
                      "same order")
    return passed(f"output equal, gradients max |diff| {diff:.0e} vs the direct run")


@_check("torch.autograd.grad reaches the parameters inside fn",
        hint="record the graph in the forward (no torch.autograd.Function, no nested backward): "
             "torch.autograd.grad(loss, params) then finds them")
def nr_autograd_grad_reaches_parameters(impl):
    net = _mlp()
    x = _leaf(4, 8)
    params = list(net.parameters())
    torch.manual_seed(3)
    ref = torch.autograd.grad(net(x).pow(2).sum(), params + [x])
    torch.manual_seed(3)
    loss = impl.checkpoint_non_reentrant(net, x).pow(2).sum()
    try:
        got = torch.autograd.grad(loss, params + [x])
    except RuntimeError as exc:
        return failed(f"torch.autograd.grad(loss, parameters + [x]) raised: {str(exc).splitlines()[0][:140]}",
                      "reentrant design: a torch.autograd.Function whose backward runs a nested backward hides the "
                      "parameters inside fn from the outer graph, so torch.autograd.grad cannot reach them; record "
                      "the graph in the forward and drop only the saved tensors, with saved_tensors_hooks")
    diff = max(_maxdiff(a, b) for a, b in zip(got, ref))
    if diff > GRAD_ATOL:
        return failed(f"torch.autograd.grad: max |diff| {diff:.2e} vs the direct run",
                      "the recomputed saved tensors must be the forward's, in the same order")
    return passed(f"torch.autograd.grad(loss, parameters + [x]): max |diff| {diff:.0e} vs the direct run")


@_check("frozen input: parameters get gradients, no anchor needed",
        hint="with the graph recorded in the forward, parameters inside fn get gradients whatever the inputs")
def nr_frozen_input_parameters_get_gradients(impl):
    torch.manual_seed(0)
    # Two Linears: with a frozen input the first saves only x (for its weight's gradient); a recompute whose
    # input requires grad would save its weight too, and every index after it would point one off.
    net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))  # a frozen embedding's output
    ref = torch.autograd.grad(net(x).pow(2).sum(), list(net.parameters()))
    net.zero_grad(set_to_none=True)
    out = impl.checkpoint_non_reentrant(net, x)
    if not out.requires_grad:
        return failed("input with requires_grad=False: the output does not require grad",
                      "fn must run with grad enabled in the forward (no torch.no_grad()): the graph is recorded "
                      "then, and only the saved tensors are dropped")
    try:
        out.pow(2).sum().backward()
    except RuntimeError as exc:
        return failed(f"input with requires_grad=False: backward raised {str(exc).splitlines()[0][:160]}",
                      "the recompute saved other tensors than the forward: recompute on inputs whose "
                      "requires_grad is as it was (a recompute whose inputs all require grad saves more, and every "
                      "index after the first extra one points to the wrong tensor)")
    if any(p.grad is None for p in net.parameters()):
        return failed("input with requires_grad=False: some parameter's .grad is None",
                      "back-propagate through fn's graph")
    diff = max(_maxdiff(p.grad, r) for p, r in zip(net.parameters(), ref))
    if diff > GRAD_ATOL:
        return failed(f"input with requires_grad=False: weight gradients max |diff| {diff:.2e} vs the direct run",
                      "recompute on inputs whose requires_grad is as it was: a recompute whose inputs all require "
                      "grad saves more tensors than the forward did, so the indices no longer match")
    return passed(f"frozen input: weight gradients max |diff| {diff:.0e}, no anchor")


@_check("forward keeps only the inputs (the allocator's view)",
        hint="the pack hook must not keep the tensor (return an index, or a handle): what fn saves is dropped "
             "after the forward and recomputed in backward")
def nr_forward_keeps_only_inputs(impl):
    combo = {"dropout": 0.5, "autocast": "off", "input": "requires grad", "call": "positional", "outputs": "one"}
    net = combination_net(0.5)
    yours = kept_allocated_bytes(impl.checkpoint_non_reentrant, combo, net)
    torchs, plain = reference("checkpoint kept", combo), kept_allocated_bytes(_direct, combo, net)
    detail = (f"the allocator holds {yours:,} bytes after your forward, {torchs:,} after torch.utils.checkpoint's "
              f"(use_reentrant=False), {plain:,} without checkpointing")
    if yours > torchs + KEPT_SLACK:
        return failed(detail, "the forward keeps what fn saves anyway: the pack hook must return something small "
                              "(an index) instead of the tensor, and unpack recompute it")
    return passed(detail)


@_check("dropout: the recompute draws the same mask",
        hint="stash torch.get_rng_state() before running fn; restore it before the recompute")
def nr_dropout_mask_same_in_recompute(impl):
    net = _mlp(dropout=0.5)
    x = _leaf(16, 8)
    out_ref, *_ = _run(_direct, net, x)
    ref = [g.clone() for g in _grads(net, x)]
    out, *_ = _run(impl.checkpoint_non_reentrant, net, x)
    got = _grads(net, x)
    if any(g is None for g in got):
        return failed("some gradients are None with dropout inside fn", "every parameter and x need gradients")
    diff = max(_maxdiff(a, b) for a, b in zip(got, ref))
    if diff > GRAD_ATOL:
        return failed(f"with dropout 0.5: forward max |diff| {_maxdiff(out, out_ref):.1e}, gradients max |diff| "
                      f"{diff:.2e} vs the direct run",
                      "RNG not restored: the recompute drew another dropout mask than the forward; stash "
                      "torch.get_rng_state() before fn runs and set it back before the recompute")
    return passed(f"with dropout 0.5: gradients max |diff| {diff:.0e} vs the direct run")


@_check("the caller's RNG stream is left as it was after the recompute",
        hint="restore the RNG state for the recompute inside torch.random.fork_rng()")
def nr_callers_rng_stream_untouched(impl):
    net = _mlp(dropout=0.5)
    x = _leaf(16, 8)
    torch.manual_seed(11)
    out = impl.checkpoint_non_reentrant(net, x)
    torch.rand(100)  # the rest of the model's forward draws numbers too
    expected = torch.get_rng_state()
    out.sum().backward()
    if not torch.equal(torch.get_rng_state(), expected):
        return failed("after backward the global RNG is not where the forward left it",
                      "RNG rewound and left so: set the forward's RNG state for the recompute inside "
                      "torch.random.fork_rng(), which puts the caller's state back after")
    return passed("RNG state after backward == RNG state after forward")


@_check("autocast replayed (bf16 and fp16)",
        hint="record torch.is_autocast_enabled and torch.get_autocast_dtype before fn runs; re-enter "
             "torch.autocast with them for the recompute")
def nr_autocast_replayed(impl):
    for dtype in (torch.bfloat16, torch.float16):
        lin = nn.Linear(16, 16)
        x = _leaf(4, 16)

        def run(ckpt):
            lin.zero_grad(set_to_none=True)
            x.grad = None
            with torch.autocast("cpu", dtype=dtype):
                out = ckpt(lin, x)
            out.float().pow(2).sum().backward()
            return out.dtype, [lin.weight.grad, lin.bias.grad, x.grad]

        ref_dtype, ref = run(_torch)
        ref = [g.clone() for g in ref]
        got_dtype, got = run(impl.checkpoint_non_reentrant)
        if any(g is None for g in got):
            return failed(f"under {dtype} autocast some gradients are None", "back-propagate through fn's graph")
        diff = max(_maxdiff(a, b) for a, b in zip(got, ref))
        if got_dtype != ref_dtype or diff > GRAD_ATOL:
            return failed(f"under {dtype} autocast: output {got_dtype}, gradients max |diff| {diff:.2e} vs "
                          "torch.utils.checkpoint",
                          "the autocast state was not replayed: backward runs outside the autocast block, so the "
                          "recompute ran in another precision; record enabled and dtype, re-enter torch.autocast")
    return passed("under bf16 and fp16 autocast: gradients equal torch.utils.checkpoint's")


@_check("a parameter used inside and outside fn: its hook fires once",
        hint="one graph, recorded in the forward: the engine sums the parameter's two gradients before its "
             "hook runs, as in torch's use_reentrant=False")
def nr_hook_fires_once(impl):
    lin = nn.Linear(8, 8)
    x = _leaf(4, 8)
    calls = []
    handle = lin.weight.register_hook(lambda g: calls.append(g.clone()))
    try:
        inside = impl.checkpoint_non_reentrant(lin, x)
        (inside.pow(2).sum() + (x @ lin.weight.T).sum()).backward()  # the weight is used outside fn too
    finally:
        handle.remove()
    ref = torch.autograd.grad((lin(x).pow(2).sum() + (x @ lin.weight.T).sum()), lin.weight)[0]
    if len(calls) != 1:
        return failed(f"the weight's gradient hook fired {len(calls)} times for one backward",
                      "reentrant design: a nested backward inside the Function's backward fires the hook once "
                      "there and once in the outer backward (torch's use_reentrant=True does the same); record the "
                      "graph in the forward and drop only the saved tensors, with saved_tensors_hooks")
    if _maxdiff(calls[0], ref) > GRAD_ATOL:
        return failed("the hook saw a gradient that is not the sum of both uses",
                      "the hook must see the weight's whole gradient, inside and outside fn")
    return passed("hook fired once, with the summed gradient of both uses")


@_check("every dropout, autocast dtype, frozen input and gradient API together",
        hint="each option must survive the others: RNG and autocast dtype replayed, the inputs' requires_grad "
             "kept, with backward and with torch.autograd.grad")
def nr_options_together(impl):
    # Keyword tensors and tuple outputs are fn's own business here (it runs as it is), so they are left at one
    # value: 2 x 3 x 2 x 2 = 24 combinations.
    options = {"dropout": CHECKPOINT_OPTIONS["dropout"], "autocast": CHECKPOINT_OPTIONS["autocast"],
               "input": CHECKPOINT_OPTIONS["input"], "gradients": ["backward", "autograd.grad"]}

    def trial(combo):
        net = combination_net(combo["dropout"])
        plain = {k: combo.get(k, CHECKPOINT_OPTIONS[k][0]) for k in CHECKPOINT_OPTIONS}
        got = combination_run(impl.checkpoint_non_reentrant, plain, net, grad_api=combo["gradients"])
        problem = differs(got, reference("checkpoint", plain))
        if problem is None:  # the memory claim, in every combination
            kept, torchs = kept_allocated_bytes(impl.checkpoint_non_reentrant, plain, net), reference(
                "checkpoint kept", plain)
            if kept > torchs + KEPT_SLACK:
                problem = f"the allocator holds {kept:,} bytes after the forward, torch's checkpoint {torchs:,}"
        return problem

    hints = [({"autocast": "fp16"}, "the autocast dtype was not replayed, only that autocast was on: the "
                                    "recompute ran in bf16 (the CPU default) while the forward ran in fp16; record "
                                    "torch.get_autocast_dtype and re-enter torch.autocast with it"),
             ({"input": "frozen"}, "an input that does not require grad breaks it: recompute on inputs whose "
                                   "requires_grad is as it was, so the recompute saves what the forward saved"),
             ({"gradients": "autograd.grad"}, "torch.autograd.grad does not reach the parameters inside fn: the "
                                              "reentrant design (a Function with a nested backward) hides them; "
                                              "record the graph in the forward, with saved_tensors_hooks")]
    combos = product(options)
    return check_together(combos, trial, f"all {len(combos)} combinations: output and gradients equal torch's, "
                          "and the allocator keeps no more", hints=hints)


@_check("checkpoint_non_reentrant is built from scratch (no torch.utils.checkpoint)",
        hint="write the hooks yourself; torch.utils.checkpoint is the reference you are compared to")
def nr_built_from_scratch(impl):
    net = _mlp(dropout=0.5)
    x = _leaf(4, 8)
    ok, detail = _from_scratch(lambda: impl.checkpoint_non_reentrant(net, x).sum().backward())
    if not ok:
        return failed(detail, "delegates to torch.utils.checkpoint: build it from "
                              "torch.autograd.graph.saved_tensors_hooks (torch's is what the graders compare against)")
    return passed(detail)

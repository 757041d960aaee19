"""Tests of efftrain_lib.checkpointing: our checkpoint against running the function directly and against
torch.utils.checkpoint, the RNG and autocast replay, memory kept (exact CPU accounting), the model plans,
and the clear errors.

Tolerances: "exact" is torch.equal. It holds wherever the arithmetic is the same: ours and torch's both
recompute the same ops in the same order. Where a residual adds the gradient that flows around a checkpoint
to the one that flows through it, the order of the two additions differs between implementations
(reentrant ones accumulate into .grad inside backward): there we allow 1e-6 absolute (float32, values of
order 1, a few ulps).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint
from torch.utils.checkpoint import checkpoint_sequential as torch_checkpoint_sequential

from efftrain_lib import checkpointing as ck
from efftrain_lib.checkpointing import (
    IMPLEMENTATIONS,
    POLICIES,
    attention_block,
    checkpoint,
    checkpoint_non_reentrant,
    checkpoint_sequential,
    checkpointing_plan,
    disable_checkpointing,
    enable_checkpointing,
    mlp_block,
    sequential_split,
)
from efftrain_lib.grade import grade
from efftrain_lib.meter import SavedTensorCounter, measure_step
from efftrain_lib.models import TinyConfig, TinyTransformer, language_model_loss

RESIDUAL_ATOL = 1e-6


def mlp(dropout=0.5, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.Dropout(dropout), nn.GELU(), nn.Linear(32, 16))


def grads_of(module: nn.Module, run, *inputs, seed=3):
    """Run `run()` under a fixed seed, back-propagate sum(out^2); parameter and input gradients."""
    module.zero_grad(set_to_none=True)
    for x in inputs:
        x.grad = None
    torch.manual_seed(seed)
    out = run()
    out.pow(2).sum().backward()
    return out.detach(), [p.grad.clone() for p in module.parameters()] + [x.grad.clone() for x in inputs]


def all_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ------------------------------------------------------------------------------------- checkpoint --
def test_gradients_equal_the_direct_run_and_torch_exactly_with_dropout():
    net = mlp()
    x = torch.randn(8, 16, requires_grad=True)
    direct = grads_of(net, lambda: net(x), x)
    ours = grads_of(net, lambda: checkpoint(net, x), x)
    for reentrant in (False, True):
        ref = grads_of(net, lambda r=reentrant: torch_checkpoint(net, x, use_reentrant=r), x)
        assert torch.equal(ours[0], ref[0]) and all_equal(ours[1], ref[1])
    assert torch.equal(ours[0], direct[0]) and all_equal(ours[1], direct[1])


def test_without_rng_replay_dropout_gives_same_forward_but_wrong_gradients():
    net = mlp()
    x = torch.randn(8, 16, requires_grad=True)
    direct = grads_of(net, lambda: net(x), x)
    broken = grads_of(net, lambda: checkpoint(net, x, preserve_rng_state=False), x)
    assert torch.equal(direct[0], broken[0])  # the forward ran with the same mask ...
    assert max_diff(direct[1], broken[1]) > 0.1  # ... the recompute drew another: gradients are wrong


def test_caller_rng_stream_is_untouched_by_the_recompute():
    net = mlp()
    x = torch.randn(8, 16, requires_grad=True)
    torch.manual_seed(7)
    out = checkpoint(net, x)
    after_forward = torch.get_rng_state()
    out.sum().backward()
    assert torch.equal(torch.get_rng_state(), after_forward)


def test_kwargs_non_tensor_arguments_integer_inputs_and_several_outputs():
    def f(h, ids, scale=1.0, bias=None, tag="x"):
        return h[ids] * scale + bias, h.sum(), tag

    h = torch.randn(5, 3, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    ids = torch.tensor([0, 2, 2])

    def run(fn):
        h.grad = bias.grad = None
        out = fn(f, h, ids, scale=2.0, bias=bias, tag="t")
        assert out[2] == "t" and isinstance(out, tuple)
        (out[0].pow(2).sum() + 3 * out[1]).backward()
        return h.grad.clone(), bias.grad.clone()

    direct = run(lambda fn, *a, **k: fn(*a, **k))
    assert all_equal(run(checkpoint), direct)
    assert all_equal(run(lambda fn, *a, **k: torch_checkpoint(fn, *a, use_reentrant=False, **k)), direct)


def test_only_outputs_that_receive_a_gradient_are_backpropagated():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    first, second = checkpoint(lambda t: (lin(t), lin(t) * 2), x)
    first.sum().backward()  # the second output takes no part in the loss
    expected = torch.ones(2, 4) @ lin.weight
    assert torch.equal(x.grad, expected)


def test_frozen_inputs_still_give_parameter_gradients_unlike_reentrant_torch():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)  # e.g. a frozen embedding's output: requires_grad False
    checkpoint(lin, x).sum().backward()
    ours = lin.weight.grad.clone()
    lin.zero_grad(set_to_none=True)
    lin(x).sum().backward()
    assert torch.equal(ours, lin.weight.grad)
    lin.zero_grad(set_to_none=True)
    with pytest.warns(UserWarning, match="requires_grad"):
        out = torch_checkpoint(lin, x, use_reentrant=True)
    assert not out.requires_grad  # the trap: the parameters inside are cut from the graph


def _frozen_scaled(lin):
    """A checkpointed body that changes an input that does not require grad in place (x2)."""

    def body(h, frozen):
        frozen.mul_(2)
        return lin(h) * frozen

    return body


def test_an_input_changed_in_place_is_refused_where_reentrant_torch_gives_wrong_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x, frozen = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)

    def grads(run):
        lin.zero_grad(set_to_none=True)
        x.grad = None
        run(_frozen_scaled(lin), x, frozen.clone()).sum().backward()
        return lin.weight.grad.clone(), x.grad.clone()

    direct = grads(lambda f, *a: f(*a))
    reentrant = grads(lambda f, *a: torch_checkpoint(f, *a, use_reentrant=True))
    # torch's reentrant mode recomputes from the doubled input: every gradient is twice the true one.
    assert all(torch.allclose(r, 2 * d) for r, d in zip(reentrant, direct))
    version_error = "modified by an inplace operation.*is at version 1; expected version 0"
    with pytest.raises(RuntimeError, match=version_error):
        grads(lambda f, *a: torch_checkpoint(f, *a, use_reentrant=False))
    caller_copy = frozen.clone()
    out = checkpoint(_frozen_scaled(lin), x, frozen=caller_copy)
    with pytest.raises(RuntimeError, match=r"changed its tensor input in place.*keyword argument 'frozen' "
                                           r"\(version 0 -> 1\).*wrong gradients.*clone\(\)"):
        out.sum().backward()
    assert torch.equal(caller_copy, 2 * frozen)  # changed once by the forward, not again by a recompute


def test_an_input_changed_in_place_after_the_checkpoint_is_caught_by_autograd():
    lin = nn.Linear(4, 4)
    h = torch.randn(3, 4, requires_grad=True) * 1  # not a leaf: it may change in place
    out = checkpoint(lin, h)
    with torch.no_grad():
        h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_in_place_changes_to_the_function_s_own_tensors_are_fine():
    lin = nn.Linear(4, 4)
    x = torch.randn(3, 4, requires_grad=True)

    def body(h):
        y = lin(h)
        y.mul_(2)  # a tensor made inside: the recompute makes it again
        return y

    checkpoint(body, x).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    body(x).sum().backward()
    assert torch.equal(ours, x.grad)


@pytest.mark.parametrize("impl, calls", [("plain", 1), ("ours", 2), ("torch-reentrant", 2), ("torch", 1)])
def test_a_parameter_used_inside_and_outside_gets_its_hooks_called_as_documented(impl, calls):
    """torch's test_checkpointing_without_reentrant_parameter_used_in_an_out (test/test_autograd.py) expects
    one hook call with use_reentrant=False; ours, like use_reentrant=True, calls it once per piece."""
    torch.manual_seed(0)
    w = torch.randn(10, 10, requires_grad=True)
    x = torch.rand(10, 10, requires_grad=True)
    seen, accumulated = [], []
    w.register_hook(lambda grad: seen.append(grad.clone()))
    w.register_post_accumulate_grad_hook(lambda p: accumulated.append(p.grad.clone()))
    run = {"plain": lambda f, t: f(t), "ours": checkpoint,
           "torch-reentrant": lambda f, t: torch_checkpoint(f, t, use_reentrant=True),
           "torch": lambda f, t: torch_checkpoint(f, t, use_reentrant=False)}[impl]
    h = w * x  # w outside the checkpoint
    run(lambda t: w * t, h).sum().backward()  # and inside it
    assert len(seen) == len(accumulated) == calls
    assert torch.allclose(w.grad, 2 * w.detach() * x.detach(), rtol=1e-6)  # d/dw sum(w * (w * x))
    assert torch.allclose(sum(seen), w.grad, rtol=1e-6)  # the pieces add up to the one gradient
    assert "fires once per piece" in ck.__doc__ and "use_reentrant=True" in ck.__doc__


def test_no_grad_mode_just_runs_the_function():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    with torch.no_grad():
        out = checkpoint(lin, x)
    assert not out.requires_grad and torch.equal(out, lin(x).detach())


def test_autocast_state_is_replayed_in_the_recompute():
    torch.manual_seed(0)
    lin = nn.Linear(16, 16)
    x = torch.randn(4, 16, requires_grad=True)

    def run(fn):
        lin.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(lin, x)
        assert out.dtype == torch.bfloat16
        out.float().pow(2).sum().backward()
        return lin.weight.grad.clone(), x.grad.clone()

    direct = run(lambda f, t: f(t))
    assert all_equal(run(checkpoint), direct)
    assert all_equal(run(lambda f, t: torch_checkpoint(f, t, use_reentrant=False)), direct)


def test_forward_keeps_only_the_inputs_exactly_what_torch_non_reentrant_keeps():
    net = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    x = torch.randn(32, 64, requires_grad=True)
    kept = {}
    for name, run in {"plain": lambda: net(x), "ours": lambda: checkpoint(net, x),
                      "torch": lambda: torch_checkpoint(net, x, use_reentrant=False)}.items():
        with SavedTensorCounter(net) as counter:
            out = run()
            kept[name] = counter.activation_bytes
            out.sum().backward()
            assert counter.activation_bytes == 0
            if name == "ours":  # our recompute runs under the counter's hooks: the peak sees it
                assert counter.peak_bytes == kept["plain"]
    assert kept["ours"] == kept["torch"] == x.numel() * 4
    assert kept["plain"] == (32 * 64 + 32 * 256 * 2) * 4  # Linear input, GELU input, Linear input


def test_backward_twice_gives_a_clear_error_and_retain_graph_allows_it():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    loss = checkpoint(lin, x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        loss.backward()
    x.grad = None
    loss = checkpoint(lin, x).sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    assert torch.equal(x.grad, 2 * first)


def test_autograd_grad_through_a_checkpoint_is_refused_clearly():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="autograd.grad"):
        torch.autograd.grad(checkpoint(lin, x).sum(), x)


def test_non_reentrant_reaches_parameters_with_autograd_grad_fires_hooks_once_and_retains_the_graph():
    # Exercise 2.3's API: the graph is recorded in the forward, only the saved tensors are recomputed.
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    direct = torch.autograd.grad(lin(x).pow(2).sum() + (x @ lin.weight.T).sum(), [lin.weight, x])
    calls = []
    lin.weight.register_hook(calls.append)
    loss = checkpoint_non_reentrant(lin, x).pow(2).sum() + (x @ lin.weight.T).sum()
    got = torch.autograd.grad(loss, [lin.weight, x], retain_graph=True)
    assert all(torch.allclose(g, d, atol=1e-6) for g, d in zip(got, direct)) and len(calls) == 1
    again = torch.autograd.grad(loss, [lin.weight, x])  # retain_graph: the recomputed tensors are still there
    assert all(torch.equal(a, g) for a, g in zip(again, got))
    frozen_lin = nn.Linear(4, 4)
    checkpoint_non_reentrant(frozen_lin, torch.randn(2, 4)).sum().backward()  # no anchor needed
    assert frozen_lin.weight.grad is not None


def test_non_reentrant_refuses_a_changed_input_and_a_recompute_that_saves_other_tensors():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x, frozen = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    out = checkpoint_non_reentrant(_frozen_scaled(lin), x, frozen=frozen)
    with pytest.raises(RuntimeError, match=r"changed its tensor input in place.*keyword argument 'frozen'"):
        out.sum().backward()
    runs = []

    def changes_between_runs(t):
        runs.append(1)
        return t.exp() if len(runs) == 1 else t * 2  # exp saves its output; the second run saves nothing

    with pytest.raises(RuntimeError, match="recompute saved 0 tensors for backward where the forward saved 1"):
        checkpoint_non_reentrant(changes_between_runs, x).sum().backward()


@pytest.mark.parametrize("bad, match", [(None, "callable"), (3, "callable"), ("f", "callable")])
def test_non_callable_fn_is_rejected(bad, match):
    with pytest.raises(TypeError, match=match):
        checkpoint(bad, torch.randn(2))


def test_unsupported_outputs_are_named():
    with pytest.raises(TypeError, match="returned dict"):
        checkpoint(lambda t: {"out": t * 2}, torch.randn(2, requires_grad=True))


# --------------------------------------------------------------------------- checkpoint_sequential --
@pytest.mark.parametrize("n, segments", [(8, 1), (8, 2), (8, 3), (8, 8), (10, 3), (5, 4)])
def test_sequential_split_matches_torch(n, segments):
    bounds = sequential_split(n, segments)
    assert len(bounds) == segments and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    size = n // segments
    assert all(stop - start == size for start, stop in bounds[:-1])


@pytest.mark.parametrize("segments", [1, 2, 3, 4, 8])
def test_checkpoint_sequential_equals_torch_in_output_gradients_and_kept_bytes(segments):
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 32))
                             for _ in range(8)])
    x = torch.randn(16, 32, requires_grad=True)
    results = {}
    for name, run in {
        "ours": lambda: checkpoint_sequential(blocks, segments, x),
        "torch": lambda: torch_checkpoint_sequential(blocks, segments, x, use_reentrant=False),
    }.items():
        blocks.zero_grad(set_to_none=True)
        x.grad = None
        torch.manual_seed(5)
        with SavedTensorCounter(blocks) as counter:
            out = run()
            kept = counter.activation_bytes
            out.pow(2).sum().backward()
        results[name] = (out.detach(), [p.grad.clone() for p in blocks.parameters()] + [x.grad.clone()], kept)
    ours, ref = results["ours"], results["torch"]
    assert torch.equal(ours[0], ref[0]) and all_equal(ours[1], ref[1])
    assert ours[2] == ref[2]


def test_checkpoint_sequential_reproduces_the_reference_figures():
    # REFERENCE.md: 8 FFN blocks 512->2048->512, 64 rows: 4.62 / 2.62 / 2.00 MiB kept at 2 / 4 / 8 segments.
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)) for _ in range(8)])
    x = torch.randn(64, 512)
    for segments, mib in [(2, 4.625), (4, 2.625), (8, 2.0)]:
        with SavedTensorCounter(blocks) as counter:
            out = checkpoint_sequential(blocks, segments, x)
            assert counter.activation_bytes == mib * 2**20
            del out


@pytest.mark.parametrize("segments, error, match", [
    (0, ValueError, "between 1 and the number of functions"),
    (-1, ValueError, "between 1 and the number of functions"),
    (5, ValueError, r"between 1 and the number of functions \(4\), got 5"),
    (2.0, TypeError, "segments must be an int"),
])
def test_checkpoint_sequential_rejects_bad_segments(segments, error, match):
    blocks = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
    with pytest.raises(error, match=match):
        checkpoint_sequential(blocks, segments, torch.randn(2, 4, requires_grad=True))


def test_checkpoint_sequential_rejects_bad_functions():
    with pytest.raises(TypeError, match="nn.Sequential or a list"):
        checkpoint_sequential(nn.Linear(4, 4), 1, torch.randn(2, 4))
    with pytest.raises(TypeError, match=r"functions\[1\] is not callable"):
        checkpoint_sequential([nn.Linear(4, 4), 3], 1, torch.randn(2, 4))
    with pytest.raises(ValueError, match="at least one function"):
        checkpoint_sequential([], 1, torch.randn(2, 4))


# ------------------------------------------------------------------------------------------ model --
def tiny(n_layers=4, dropout=0.1, seed=0) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(TinyConfig(n_layers=n_layers, dropout=dropout, max_seq_len=16))


def model_grads(model, ids, seed=5):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = language_model_loss(model(ids), ids)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


IDS = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))


def test_sub_block_halves_recompose_the_decoder_layer_exactly():
    layer = tiny(dropout=0.0).layers[0]
    x = torch.randn(2, 16, 64)
    h = x + attention_block(layer, x)
    assert torch.equal(h + mlp_block(layer, h), layer(x))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("policy, every", [("block", 1), ("block", 3), ("attention", 1), ("mlp", 1),
                                           ("sub_blocks", 1)])
def test_every_plan_gives_the_plain_model_s_loss_and_gradients(policy, every, impl):
    model = tiny()
    loss0, grads0 = model_grads(model, IDS)
    enable_checkpointing(model, every, policy=policy, impl=impl)
    loss, grads = model_grads(model, IDS)
    assert torch.equal(loss, loss0)
    if policy == "block":  # whole layers: the same arithmetic in the same order
        assert all_equal(grads, grads0)
    else:  # a residual adds gradients around and through the checkpoint: order may differ
        assert max_diff(grads, grads0) <= RESIDUAL_ATOL


def test_plans_keep_the_state_dict_and_undo_cleanly():
    model = tiny()
    keys = list(model.state_dict())
    enable_checkpointing(model, 2)
    assert list(model.state_dict()) == keys and str(checkpointing_plan(model)).endswith("(2 segments)")
    enable_checkpointing(model, policy="mlp")  # replaces the previous plan
    assert type(model.layers) is nn.ModuleList and "forward" in model.layers[0].__dict__
    disable_checkpointing(model)
    assert checkpointing_plan(model) is None and "forward" not in model.layers[0].__dict__
    assert list(model.state_dict()) == keys


def test_kept_activations_shrink_with_the_plan():
    model = tiny(n_layers=8, dropout=0.0)
    batch = (IDS, IDS)

    def kept():
        return measure_step(model, None, batch, attribute_modules=False).sample("forward").activations

    plain = kept()
    enable_checkpointing(model, 1)
    per_layer = kept()
    enable_checkpointing(model, 4)
    every_four = kept()
    checkpoint_bytes = 2 * 16 * 64 * 4  # one layer input: batch x seq x dim fp32
    assert per_layer - every_four == (8 - 2) * checkpoint_bytes  # 8 checkpoints vs 2
    assert plain > 5 * per_layer


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(every=0), ValueError, "every must be an int between 1 and the number of layers"),
    (dict(every=5), ValueError, r"\(4\), got 5"),
    (dict(policy="attn"), ValueError, "policy must be one of"),
    (dict(impl="fast"), ValueError, "impl must be one of"),
])
def test_enable_checkpointing_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        enable_checkpointing(tiny(), **kwargs)


def test_enable_checkpointing_names_a_model_without_layers():
    with pytest.raises(TypeError, match="layers"):
        enable_checkpointing(nn.Linear(2, 2))


def test_policies_are_the_documented_ones():
    assert POLICIES == ("block", "attention", "mlp", "sub_blocks")


# ---------------------------------------------------------------------------------------- graders --
def test_the_library_passes_every_checkpointing_check():
    report = grade("checkpointing", "efftrain_lib")
    failures = [(r.exercise, r.check, r.detail) for r in report.results if not r.passed]
    assert len(report.results) >= 10
    assert report.all_passed, f"efftrain_lib/checkpointing.py fails the checkpointing graders: {failures}"


def test_module_docstring_states_its_limits():
    assert "retain_graph=True" in ck.__doc__ and "autograd.grad" in ck.__doc__
    assert "LAST chunk runs normally" in checkpoint_sequential.__doc__


# ------------------------------------------------------------------------------- explorer logic --
from efftrain_lib import checkpointing_explorer as explorer  # noqa: E402
from efftrain_lib.meter import MIB  # noqa: E402


@pytest.fixture(scope="module")
def four_layer_sweep():
    config = explorer.deep_config(n_layers=4, hidden_size=32, seq=16)
    torch.manual_seed(0)
    model = TinyTransformer(config)
    batch = explorer.token_batch(config, batch_size=4)
    return [explorer.measure_plan(model, batch, every, steps=1) for every in (None, 1, 2, 4)], model, batch


def test_activation_model_predicts_the_measured_memory(four_layer_sweep):
    sweep, model, _ = four_layer_sweep
    fitted = explorer.ActivationModel.fit(sweep)
    assert fitted.c == 4 * 16 * 32 * 4  # a checkpoint is one layer input: batch x seq x dim fp32
    for m in sweep:
        assert fitted.kept(m.every) == m.kept_bytes  # exact by construction of the accounting
        # the peak is a model of backward's order of releases: within 2% here
        assert abs(fitted.peak(m.every) - m.peak_bytes) <= 0.02 * m.peak_bytes, (m.label, fitted.peak(m.every), m.peak_bytes)
    assert fitted.a / fitted.c > 10  # a transformer layer keeps far more than its input
    assert fitted.best_segments > 4  # so the optimum is one layer per segment
    assert all(m.step_seconds > 0 for m in sweep)
    assert checkpointing_plan(model) is None  # measure_plan leaves the model as it found it


def test_activation_model_fit_needs_its_three_runs(four_layer_sweep):
    sweep, _, _ = four_layer_sweep
    with pytest.raises(ValueError, match="missing"):
        explorer.ActivationModel.fit([m for m in sweep if m.every != 1])


def test_thin_chain_peaks_lowest_at_sqrt_n_segments():
    chain = explorer.thin_chain(16, width=32)
    x = torch.randn(8, 32, requires_grad=True)
    unit = 8 * 32 * 4
    plain_kept, plain_peak = explorer.chain_plan_bytes(chain, x, None)
    assert plain_kept == plain_peak == 17 * unit  # 16 Linear inputs and the last Tanh output
    peaks = {every: explorer.chain_plan_bytes(chain, x, every)[1] for every in (1, 2, 4, 8, 16)}
    assert min(peaks, key=peaks.get) == 4 and peaks[4] == 8 * unit  # sqrt(16): 3 checkpoints + 5 in the segment
    kept_seq, peak_seq = explorer.chain_plan_bytes(chain, x, 4, sequential=True)
    assert kept_seq == 8 * unit and peak_seq == peaks[4]  # the last segment kept whole: same peak here


def test_interleaved_timing_and_its_errors():
    config = explorer.deep_config(n_layers=2, hidden_size=32, seq=8)
    torch.manual_seed(0)
    model = TinyTransformer(config)
    batch = explorer.token_batch(config, batch_size=2)
    timings = explorer.time_plans(model, batch, [1, None], rounds=3, progress=False)
    assert set(timings.seconds) == {None, 1} and all(s > 0 for s in timings.seconds.values())
    assert timings.reference is None and timings.ratios[None] == 1.0 and timings.ratios[1] > 0
    assert checkpointing_plan(model) is None
    measured = explorer.with_timing(explorer.measure_plan(model, batch, 1, steps=0), timings)
    assert measured.step_seconds == timings.seconds[1] and measured.vs_plain == timings.ratios[1]
    with pytest.raises(ValueError, match="rounds >= 1"):
        explorer.interleaved_step_seconds({}, batch)
    with pytest.raises(ValueError, match="reference"):
        explorer.interleaved_step_seconds({"a": (model, None)}, batch, reference="b")
    with pytest.raises(ValueError, match="n_layers and width"):
        explorer.thin_chain(0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explorer.predicted_step_seconds(1.0, 1.5, 1.0)
    assert explorer.predicted_step_seconds(0.1, 0.4, 1.0) == pytest.approx(0.14)


def test_drawing_functions_on_an_agg_figure(four_layer_sweep):
    from matplotlib.figure import Figure

    sweep, _, _ = four_layer_sweep
    fitted = explorer.ActivationModel.fit(sweep)
    fig = Figure()
    ax_m, ax_t, ax_p = fig.subplots(1, 3)
    explorer.draw_plan_sweep(ax_m, ax_t, sweep, fitted, title="t")
    explorer.draw_prediction(ax_p, fitted, 2, sweep[2])
    assert ax_m.get_title() == "t" and len(ax_m.lines) >= 4 and len(ax_t.lines) == 2
    assert "best at sqrt(n a/c)" in ax_p.get_title()


def test_plan_explorer_builds_its_widget(monkeypatch):
    pytest.importorskip("ipywidgets")
    fitted = explorer.ActivationModel(4, base=1e5, c=1e4, a=2e5)
    fake = explorer.PlanMeasurement(4, 1, 10, 20 * MIB, 0.01)
    monkeypatch.setattr(explorer, "_measured", lambda n, every, batch_size: fake)
    box = explorer.plan_explorer(fitted, 0.35, layer_choices=(4, 8))
    assert repr(box).startswith("Checkpointing plan explorer")
    with pytest.raises(ValueError, match="layer_choices"):
        explorer.plan_explorer(fitted, 0.35, layer_choices=(0,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the CUDA RNG state is replayed per device")
def test_cuda_dropout_gradients_equal_the_direct_run_and_torch():
    torch.manual_seed(0)
    net = mlp().cuda()
    x = torch.randn(8, 16, device="cuda", requires_grad=True)
    direct = grads_of(net, lambda: net(x), x)
    ours = grads_of(net, lambda: checkpoint(net, x), x)
    ref = grads_of(net, lambda: torch_checkpoint(net, x, use_reentrant=False), x)
    assert all_equal(ours[1], direct[1]) and all_equal(ours[1], ref[1])


def test_deep_config_scales_the_mlp_like_the_default():
    assert explorer.deep_config(16).ffn_dim == TinyConfig().ffn_dim == 172
    assert explorer.deep_config(16, hidden_size=128).ffn_dim == 344

"""PyTorch's own GradScaler and checkpoint tests, run against the library's LossScaler and checkpoint.

Each test below is a port of the named PyTorch test (the same scenario and the same assertions,
rewritten for this library and for CPU), cited by file, class and name. Where the library
deliberately differs from the torch mode a test was written for, the port asserts the library's
documented behaviour instead and says so.

GradScaler sources: test/test_torch.py, class TestTorchDeviceType (the device-generic versions;
before GradScaler ran on CPU they lived in test/test_cuda.py, class TestCuda, under the same names).
Checkpoint sources: test/test_utils.py, class TestCheckpoint, and test/test_autograd.py, class
TestAutograd. Sizes are cut down where a test was marked slow (its point does not depend on size).
"""

from __future__ import annotations

import pickle
import random
from copy import deepcopy
from itertools import chain

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from efftrain_lib.checkpointing import checkpoint, checkpoint_sequential
from efftrain_lib.precision import LossScaler

INF = float("inf")


# =================================================================================================
# GradScaler
# =================================================================================================


def _scaling_models(seed):
    """A control model and an identical one to train with scaling (PyTorch's
    torch/testing/_internal/common_cuda.py, _create_scaling_models_optimizers), SGD with lr 1."""
    torch.manual_seed(seed)
    control = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    scaling = deepcopy(control)
    return control, scaling, torch.optim.SGD(control.parameters(), lr=1.0), torch.optim.SGD(scaling.parameters(), lr=1.0)


def _scaling_case(seed=0):
    """Four (input, target) batches, an MSE loss and the iteration at which an inf is injected (2),
    as _create_scaling_case builds them."""
    control, scaling, opt_control, opt_scaling = _scaling_models(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    data = [(torch.randn(8, 8, generator=generator), torch.randn(8, 8, generator=generator)) for _ in range(4)]
    return control, scaling, opt_control, opt_scaling, data, nn.MSELoss(), 2


def _run_scaling_case(run, unskipped, skipped, atol=1e-7):
    """test_torch.py's _run_scaling_case: the scaled run equals an unscaled control run that skips the
    same step, with scaling enabled and disabled; the scale grew `unskipped` and backed off `skipped` times."""
    for enabled in (True, False):
        control, scaling, opt_control, opt_scaling, data, loss_fn, skip_iter = _scaling_case()
        scaler = LossScaler(init_scale=128.0, growth_factor=2.0, enabled=enabled, growth_interval=1)
        run(data, control, opt_control, scaler, loss_fn, skip_iter, False)
        scaler = run(data, scaling, opt_scaling, scaler, loss_fn, skip_iter, True) or scaler
        if enabled:
            expected = 128.0 * scaler.get_growth_factor() ** unskipped * scaler.get_backoff_factor() ** skipped
            assert scaler.get_scale() == expected
        else:
            assert scaler.get_scale() == 1.0
        for c, s in zip(control.parameters(), scaling.parameters()):
            torch.testing.assert_close(c.grad, s.grad, atol=atol, rtol=1e-5)
            torch.testing.assert_close(c, s, atol=atol, rtol=1e-5)


def _step_or_skip(scaler, optimizer, model, i, skip_iter):
    """The scaled branch's tail in every run(): inject inf at skip_iter, step, update."""
    if i == skip_iter and scaler.is_enabled():
        model[1].weight.grad.fill_(INF)
    scaler.step(optimizer)
    scaler.update()


def _control_step(scaler, optimizer, i, skip_iter):
    if not scaler.is_enabled() or i != skip_iter:
        optimizer.step()


@pytest.mark.parametrize("try_pickle", [False, True])
def test_grad_scaling_autocast(try_pickle):
    """test_torch.py TestTorchDeviceType.test_grad_scaling_autocast: scaling + autocast against neither
    (atol 1e-2: fp32 against a bf16/fp32 mix, CPU autocast's dtype), and the scaler pickled every step."""

    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):
        for i, (x, target) in enumerate(data):
            optimizer.zero_grad()
            with torch.autocast("cpu", enabled=try_scaling_api):
                loss = loss_fn(model(x), target)
            if try_scaling_api:
                scaler.scale(loss).backward()
                _step_or_skip(scaler, optimizer, model, i, skip_iter)
                if try_pickle:
                    scaler = pickle.loads(pickle.dumps(scaler))
            else:
                loss.backward()
                _control_step(scaler, optimizer, i, skip_iter)
        return scaler

    _run_scaling_case(run, unskipped=3, skipped=1, atol=1e-2)


@pytest.mark.parametrize("separate_unscale", [False, True])
def test_grad_scaling_clipping(separate_unscale):
    """test_torch.py TestTorchDeviceType.test_grad_scaling_clipping (clip the scaled gradients to
    max_norm * scale) and test_grad_scaling_clipping_separate_unscale (unscale_, then clip the true
    gradients, the course's recommended order, with the inf injected before unscale_): both equal
    clipping the true gradients to max_norm."""

    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):
        max_norm = 0.2
        for i, (x, target) in enumerate(data):
            optimizer.zero_grad()
            loss = loss_fn(model(x), target)
            if not try_scaling_api:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                _control_step(scaler, optimizer, i, skip_iter)
                continue
            scaler.scale(loss).backward()
            if separate_unscale:
                if i == skip_iter and scaler.is_enabled():
                    model[1].weight.grad.fill_(INF)
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm * scaler.get_scale())
                _step_or_skip(scaler, optimizer, model, i, skip_iter)

    _run_scaling_case(run, unskipped=3, skipped=1, atol=1e-7 if separate_unscale else 1e-5)


def test_grad_scaling_penalty():
    """test_torch.py TestTorchDeviceType.test_grad_scaling_penalty: a gradient penalty computed from
    torch.autograd.grad of the scaled loss, unscaled by hand with 1 / get_scale()."""

    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):
        for i, (x, target) in enumerate(data):
            optimizer.zero_grad()
            loss = loss_fn(model(x), target)
            if try_scaling_api:
                grads = torch.autograd.grad(scaler.scale(loss), model.parameters(), create_graph=True)
                grads = [g * (1.0 / scaler.get_scale()) for g in grads]
            else:
                grads = torch.autograd.grad(loss, model.parameters(), create_graph=True)
            loss = loss + sum(g.pow(2).sum() for g in grads).sqrt()
            if try_scaling_api:
                scaler.scale(loss).backward()
                _step_or_skip(scaler, optimizer, model, i, skip_iter)
            else:
                loss.backward()
                _control_step(scaler, optimizer, i, skip_iter)

    _run_scaling_case(run, unskipped=3, skipped=1)


def test_grad_scaling_accumulation():
    """test_torch.py TestTorchDeviceType.test_grad_scaling_accumulation: two micro-batches per step,
    one scale for both (update only after the step)."""

    def run(data, model, optimizer, scaler, loss_fn, skip_iter, try_scaling_api):
        iters_to_accumulate = 2
        for i, (x, target) in enumerate(data):
            loss = loss_fn(model(x), target) / iters_to_accumulate
            (scaler.scale(loss) if try_scaling_api else loss).backward()
            if (i + 1) % iters_to_accumulate == 0:
                if try_scaling_api:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad()

    _run_scaling_case(run, unskipped=2, skipped=0)


@pytest.mark.parametrize("enabled", [True, False])
def test_grad_scaling_multiple(enabled):
    """test_torch.py TestTorchDeviceType.test_grad_scaling_multiple: two models, two optimizers, two
    losses that both reach both models; one optimizer unscaled separately. An inf in model1's gradients
    skips optimizer1's step only (optimizer0 steps) and backs the one shared scale off once."""
    control0, scaling0, opt_control0, opt_scaling0, data, loss_fn, skip_iter = _scaling_case(seed=0)
    control1, scaling1, opt_control1, opt_scaling1 = _scaling_models(seed=5)
    scaler = LossScaler(init_scale=128.0, growth_factor=2.0, enabled=enabled, growth_interval=1)

    def run(model0, model1, optimizer0, optimizer1, try_scaling_api):
        for i, (x, target) in enumerate(data):
            optimizer0.zero_grad()
            optimizer1.zero_grad()
            out0, out1 = model0(x), model1(x)
            loss0 = loss_fn(0.3 * out0 + 0.7 * out1, target)
            loss1 = loss_fn(0.6 * out0 - 0.4 * out1, target)
            if try_scaling_api:
                scaler.scale(loss0).backward(retain_graph=True)
                scaler.scale(loss1).backward()
                if i == skip_iter and scaler.is_enabled():
                    model1[1].weight.grad.fill_(INF)
                scaler.unscale_(optimizer0)
                scaler.step(optimizer0)
                scaler.step(optimizer1)
                scaler.update()
            else:
                loss0.backward(retain_graph=True)
                loss1.backward()
                optimizer0.step()
                if not scaler.is_enabled() or i != skip_iter:
                    optimizer1.step()

    run(control0, control1, opt_control0, opt_control1, False)
    run(scaling0, scaling1, opt_scaling0, opt_scaling1, True)
    expected = 128.0 * scaler.get_growth_factor() ** 3 * scaler.get_backoff_factor() if enabled else 1.0
    assert scaler.get_scale() == expected
    for c, s in zip(chain(control0.parameters(), control1.parameters()),
                    chain(scaling0.parameters(), scaling1.parameters())):
        torch.testing.assert_close(c, s, atol=1e-7, rtol=1e-5)


def test_grad_scaling_scale():
    """test_torch.py TestTorchDeviceType.test_grad_scaling_scale: nested tuples and lists of outputs
    are scaled element by element and keep their structure."""
    scaler = LossScaler(init_scale=2.0)
    t0, t1 = torch.full((1,), 4.0), torch.full((1,), 4.0)
    outputs = scaler.scale((t1.clone(), (t0.clone(), t1.clone()), [t0.clone(), (t1.clone(), t0.clone())]))
    assert isinstance(outputs[1], tuple) and isinstance(outputs[2], list)
    flat = [outputs[0], *outputs[1], outputs[2][0], *outputs[2][1]]
    assert all(t.item() == 8.0 for t in flat)


@pytest.mark.parametrize("lazy_init_scale", [True, False])
def test_grad_scaling_state_dict(lazy_init_scale):
    """test_torch.py TestTorchDeviceType.test_grad_scaling_state_dict: load_state_dict overwrites the
    scale, the factors, the interval and the count, whether or not the scale was used first."""
    s0 = LossScaler(init_scale=3.0, growth_factor=4.0, backoff_factor=0.5, growth_interval=2)
    s1 = LossScaler(init_scale=6.0, growth_factor=7.0, backoff_factor=0.8, growth_interval=1)
    if lazy_init_scale:
        s1.scale(torch.full((1,), 4.0))
    s1.load_state_dict(s0.state_dict())
    assert s1.get_scale() == 3.0 and s1.get_growth_factor() == 4.0 and s1.get_backoff_factor() == 0.5
    assert s1.get_growth_interval() == 2 and s1.growth_tracker == 0


def test_pickle_gradscaler():
    """test_torch.py TestTorchDeviceType.test_pickle_gradscaler: a pickled scaler comes back with its
    settings, and a used one keeps scaling with its scale."""
    for used in (False, True):
        a = LossScaler(init_scale=3.0, growth_factor=4.0, backoff_factor=0.5, growth_interval=2)
        if used:
            a.scale(torch.tensor([4.0]))
        b = pickle.loads(pickle.dumps(a))
        assert b.is_enabled() == a.is_enabled()
        assert (b.get_scale(), b.get_growth_factor(), b.get_backoff_factor(), b.get_growth_interval()) == (3.0, 4.0, 0.5, 2)
        assert b.growth_tracker == 0
        assert b.scale(torch.tensor([4.0])).item() == 12.0


def test_grad_scaling_update_scale():
    """test_torch.py TestTorchDeviceType.test_grad_scaling_update_scale (torch._amp_update_scale_'s rules),
    through update(): growth after growth_interval finite steps, backoff (and a reset count) on inf."""
    scaler = LossScaler(init_scale=4.0, growth_factor=2.0, backoff_factor=0.25, growth_interval=2)
    param = nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=0.0)

    def step(found_inf):
        param.grad = torch.tensor([INF if found_inf else 1.0, 1.0])
        scaler.step(optimizer)
        scaler.update()
        return scaler.growth_tracker, scaler.get_scale()

    assert step(False) == (1, 4.0)  # not yet growth_interval finite steps: unchanged
    assert step(False) == (0, 8.0)  # the second one grows it
    assert step(True) == (0, 2.0)  # inf: back off by 0.25


@pytest.mark.parametrize("inf_at", [None, 0, 1, 2, 3])
@pytest.mark.parametrize("value", [INF, float("nan")])
def test_grad_scaling_unscale(inf_at, value):
    """test_torch.py TestTorchDeviceType.test_grad_scaling_unscale, through unscale_: contiguous,
    transposed (non-contiguous but dense) and sliced (not dense) gradients are all unscaled, and an
    inf/NaN in any of them is found. (Its fp16 gradients are left out: LossScaler refuses fp16
    gradients with a message, tests/test_precision.py.)"""
    g = torch.full((20, 20), 4.0)
    grads = [g.clone(), g.clone().t(), g.clone()[:, :5], g.clone()[:, :5]]
    params = [nn.Parameter(torch.zeros(t.shape)) for t in grads]
    for p, grad in zip(params, grads):
        p.grad = grad
    if inf_at is not None:
        grads[inf_at][2, 2] = value
    scaler = LossScaler(init_scale=4.0)
    optimizer = torch.optim.SGD(params, lr=1.0)
    scaler.unscale_(optimizer)
    assert scaler.step(optimizer) is (inf_at is None)
    if inf_at is None:
        assert all(torch.equal(p.grad, torch.ones_like(p.grad)) for p in params)


def test_grad_scale_will_not_overflow():
    """test/test_cuda.py TestCuda.test_grad_scale_will_not_overflow (on CPU): growing a scale of 1e38
    by 2**4 would overflow fp32; the scale stays finite."""
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    optimizer = torch.optim.Adam(model.parameters())
    scaler = LossScaler(growth_interval=1, growth_factor=2**4, init_scale=1e38)
    loss = ((model(torch.randn(1, 5)) - 1e-30 * torch.randn(1, 1)) ** 2).mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(torch.tensor(scaler.get_scale()))


# =================================================================================================
# checkpoint
# =================================================================================================


def _check_checkpoint_sequential(model, module_lists, segments, x):
    """test_utils.py TestCheckpoint._check_checkpoint_sequential: outputs, input and parameter gradients
    of checkpoint_sequential equal the plain model's."""
    out = model(x)
    model.zero_grad()
    out.sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    expected_input = x.grad.clone()
    for modules in module_lists:
        detached = x.detach().requires_grad_()
        got = checkpoint_sequential(modules, segments, detached)
        model.zero_grad()
        got.sum().backward()
        assert torch.equal(got, out) and torch.equal(detached.grad, expected_input)
        assert all(torch.equal(p.grad, expected[n]) for n, p in model.named_parameters())


def test_checkpoint_trigger():
    """test_utils.py TestCheckpoint.test_checkpoint_trigger: each module runs once in forward; after
    backward the checkpointed first half ran twice, the last segment (not checkpointed) once."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.counter = 0

        def forward(self, x):
            self.counter += 1
            return x * torch.tensor(2.0)

    modules = [Net() for _ in range(10)]
    out = checkpoint_sequential(modules, 2, torch.randn(3, 4, requires_grad=True))
    assert [m.counter for m in modules] == [1] * 10
    out.sum().backward()
    assert [m.counter for m in modules] == [2] * 5 + [1] * 5


def test_checkpoint_valid():
    """test_utils.py TestCheckpoint.test_checkpoint_valid: torch.autograd.grad through a checkpoint.
    use_reentrant=True refuses it (its message is asserted, torch 2.13); use_reentrant=False gives the
    plain gradients. Ours works the reentrant way and refuses it too, saying to call .backward()."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 20), nn.ReLU(), nn.Linear(20, 5), nn.ReLU())
    x = torch.randn(1, 100, requires_grad=True)

    def grad_of(out):
        return torch.autograd.grad(outputs=[out], grad_outputs=[torch.ones(1, 5)], inputs=[x], create_graph=True)

    with pytest.raises(RuntimeError, match=r"torch.utils.checkpoint is incompatible with \.grad\(\)"):
        grad_of(torch.utils.checkpoint.checkpoint_sequential(model, 2, x, use_reentrant=True))
    plain = grad_of(model(x))
    assert torch.allclose(grad_of(torch.utils.checkpoint.checkpoint_sequential(model, 2, x, use_reentrant=False))[0],
                          plain[0])
    with pytest.raises(RuntimeError, match=r"autograd\.grad.*cannot go through this checkpoint.*\.backward\(\)"):
        grad_of(checkpoint_sequential(list(model.children()), 2, x))


@pytest.mark.parametrize("as_module_list", [False, True])
def test_checkpoint_and_module_list(as_module_list):
    """test_utils.py TestCheckpoint.test_checkpoint and test_checkpoint_module_list: an nn.Sequential, its
    list of children and an nn.ModuleList all checkpoint to the plain model's output and gradients."""
    torch.manual_seed(0)
    layers = [nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 20), nn.ReLU(), nn.Linear(20, 5), nn.ReLU()]
    container = nn.ModuleList(layers) if as_module_list else nn.Sequential(*layers)
    model = nn.Sequential(*container) if as_module_list else container
    _check_checkpoint_sequential(model, [list(container.children()), container], 2,
                                 torch.randn(1, 100, requires_grad=True))


def test_checkpoint_sequential_deprecated_multiple_and_no_args():
    """test_utils.py TestCheckpoint.test_checkpoint_sequential_deprecated_multiple_args and
    test_checkpoint_sequential_deprecated_no_args: one input only, and it is required."""

    class Two(nn.Module):
        def forward(self, a, b):
            return a, b

    a, b = torch.randn(1, 100, requires_grad=True), torch.randn(1, 100, requires_grad=True)
    with pytest.raises(TypeError):
        checkpoint_sequential(nn.Sequential(Two()), 1, a, b)
    with pytest.raises(TypeError):
        checkpoint_sequential(nn.Sequential(Two()), 1)


def test_checkpoint_rng_cpu():
    """test_utils.py TestCheckpoint.test_checkpoint_rng_cpu: dropout inside the checkpoint draws the same
    mask on recompute: gradients equal the plain run's from the same RNG state."""
    for _ in range(5):
        x = torch.randn(20000).requires_grad_()
        phase1, phase2 = nn.Dropout(), nn.Dropout()
        state = torch.get_rng_state()
        checkpoint(phase2, phase1(x)).sum().backward()
        with_checkpoint = x.grad
        torch.set_rng_state(state)
        x.grad = None
        phase2(phase1(x)).sum().backward()
        assert torch.equal(with_checkpoint, x.grad)


def test_checkpoint_non_tensor():
    """test_utils.py TestCheckpoint.test_checkpoint_non_tensor: None among the arguments."""
    x = torch.randn(1, 100, requires_grad=True)
    checkpoint(lambda t1, t2: t1 if t2 is None else t1 + t2, x, None).sum().backward()
    assert torch.equal(x.grad, torch.ones(1, 100))


def _foo(t1, t2, scale, t3):
    t4 = t1 + t2 * t3
    t5 = t1 * t2 + t3
    t4 *= scale
    t5 *= scale
    return scale, t4, None, True, t5, "bar", t1


def test_checkpoint_non_tensor_inputs_outputs():
    """test_utils.py TestCheckpoint.test_checkpoint_non_tensor_inputs_outputs: non-tensor arguments and
    outputs pass through; backward through three of the outputs gives the plain run's gradients; a
    second backward through a freed graph is refused (ours names retain_graph=True)."""
    t1, t2, t3 = torch.rand(10, requires_grad=True), torch.rand(10, requires_grad=True), torch.rand(10)
    scale = random.Random(0).randint(1, 10)
    res = checkpoint(_foo, t1, t2, scale, t3)
    assert res[0] == scale and res[2] is None and res[3] is True and res[5] == "bar"
    assert torch.allclose(res[1], (t1 + t2 * t3) * scale) and torch.allclose(res[4], (t1 * t2 + t3) * scale)
    assert torch.equal(res[6], t1)
    res[1].sum().backward(retain_graph=True)
    res[4].sum().backward(retain_graph=True)
    res[6].sum().backward()
    with pytest.raises(RuntimeError, match="second time"):
        res[6].sum().backward()
    grads = t1.grad.clone(), t2.grad.clone()
    t1.grad = t2.grad = None
    res = _foo(t1, t2, scale, t3)
    torch.autograd.backward([res[1].sum(), res[4].sum(), res[6].sum()])
    assert torch.allclose(t1.grad, grads[0]) and torch.allclose(t2.grad, grads[1])


def test_checkpoint_no_tensors():
    """test_utils.py TestCheckpoint.test_checkpoint_no_tensors: a function of plain numbers runs as is."""
    rng = random.Random(0)
    t1, t2, t3, scale = rng.random(), rng.random(), rng.random(), rng.randint(0, 10)
    res = checkpoint(_foo, t1, t2, scale, t3)
    assert res[0] == scale and res[2] is None and res[3] is True and res[5] == "bar" and res[6] == t1
    assert res[1] == pytest.approx((t1 + t2 * t3) * scale) and res[4] == pytest.approx((t1 * t2 + t3) * scale)


def test_checkpoint_partial_grad():
    """test_utils.py TestCheckpoint.test_checkpoint_partial_grad: an output that needs no gradient may be
    left out of backward. Its second half expects reentrant torch's "none of output has requires_grad=True"
    error when only an unused input requires grad; ours (like use_reentrant=False) runs, harmlessly."""
    x, other = torch.randn(1, 4, requires_grad=True), torch.randn(1, 4)
    out = checkpoint(lambda a, b: (a, b), x, other)
    out[0].sum().backward()
    assert torch.equal(x.grad, torch.ones(1, 4))
    unused = torch.randn(1, 4, requires_grad=True)
    checkpoint(lambda a, b: a, torch.randn(1, 4), unused).sum().backward()
    assert unused.grad is None or not unused.grad.any()


def test_checkpointing():
    """test_autograd.py TestAutograd.test_checkpointing (slow there: 2000 inputs; 200 here): many small
    checkpoints combined into one loss back-propagate."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(10, 1000), nn.ReLU(), nn.Linear(1000, 10))
    feats = []
    for _ in range(200):
        data = torch.empty(1, 10).uniform_().requires_grad_()
        feats.append(checkpoint(module, data))
    torch.stack(feats).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("enabled", [True, False])
def test_checkpointing_non_reentrant_autocast_cpu(enabled):
    """test_autograd.py TestAutograd.test_checkpointing_non_reentrant_autocast_cpu: the recompute runs in
    the forward's autocast dtype (bf16 mm when enabled), so backward sees matching dtypes."""
    dtypes = []

    def foo(x, y, z):
        x = torch.mm(x, y)
        y = torch.mm(x, z)
        z = torch.mm(z, z)
        dtypes.append(z.dtype)
        return z

    x, y, z = (torch.randn(3, 3, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", enabled=enabled, dtype=torch.bfloat16):
        loss = checkpoint(foo, x, y, z).sum()
    loss.backward()
    assert dtypes == [torch.bfloat16 if enabled else torch.float32] * 2  # forward and recompute


@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_checkpointing_without_reentrant(input_requires_grad):
    """test_autograd.py TestAutograd.test_checkpointing_without_reentrant (slow there: 2000 inputs; 100
    here): the module called with a keyword argument, inputs that do or do not require grad; parameter
    gradients equal the plain model's."""
    torch.manual_seed(0)

    class MyModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 10))

        def forward(self, data):
            return self.module(data)

    module = MyModule()
    module_copy = deepcopy(module)
    checkpointed, plain = [], []
    for _ in range(100):
        data = torch.empty(1, 10).uniform_().requires_grad_(input_requires_grad)
        checkpointed.append(checkpoint(module, data=data))
        plain.append(module_copy(data))
    torch.stack(checkpointed).mean().backward()
    torch.stack(plain).mean().backward()
    for a, b in zip(module.parameters(), module_copy.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_checkpoint_valid_reset_on_error():
    """test_autograd.py TestAutograd.test_checkpoint_valid_reset_on_error: after a refused
    torch.autograd.grad, a plain backward through a new checkpoint works."""
    a = torch.randn(2, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="cannot go through this checkpoint"):
        torch.autograd.grad(checkpoint(torch.exp, a).sum(), (a,))
    checkpoint(torch.exp, a).sum().backward()
    assert torch.allclose(a.grad, torch.exp(a))


def test_checkpointing_without_reentrant_detached_tensor():
    """test_autograd.py TestAutograd.test_checkpointing_without_reentrant_detached_tensor: a module that
    runs under no_grad inside the checkpoint. Reentrant torch raises "none of output has
    requires_grad=True"; ours, like use_reentrant=False, lets backward run (three times)."""

    class NoGradModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.lin2 = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)

        def forward(self, x):
            with torch.no_grad():
                return self.lin2(self.linear(x))

    module = NoGradModule()
    a = torch.randn(2, 2, requires_grad=True)
    for _ in range(3):
        out = checkpoint(module, a)
        out += a
        out.sum().backward()
    assert torch.equal(a.grad, torch.full((2, 2), 3.0))


def test_checkpointing_without_reentrant_correct_grad():
    """test_autograd.py TestAutograd.test_checkpointing_without_reentrant_correct_grad, for backward()
    (its autograd.grad half is refused by ours: test_checkpoint_valid above)."""
    a = torch.randn(2, 2, requires_grad=True)
    torch.exp(a).sum().backward()
    expected, a.grad = a.grad, None
    checkpoint(torch.exp, a).sum().backward()
    assert torch.equal(a.grad, expected)


def test_checkpointing_without_reentrant_parameter_used_in_an_out():
    """test_autograd.py TestAutograd.test_checkpointing_without_reentrant_parameter_used_in_an_out expects
    a parameter used inside and outside a checkpoint to have its hook called once. That holds for
    use_reentrant=False; ours, like use_reentrant=True, calls it twice (documented in
    efftrain_lib/checkpointing.py): asserted here for all three, with the same total gradient."""
    counts, grads = {}, {}
    for name, ckpt in {"torch non-reentrant": lambda f, t: torch_checkpoint(f, t, use_reentrant=False),
                       "torch reentrant": lambda f, t: torch_checkpoint(f, t, use_reentrant=True),
                       "ours": checkpoint}.items():
        torch.manual_seed(0)
        w = torch.randn(10, 10, requires_grad=True)
        calls = []
        w.register_hook(calls.append)
        x = torch.rand(10, 10, requires_grad=True)
        ckpt(lambda t: w * t, w * x).sum().backward()
        counts[name], grads[name] = len(calls), w.grad
    assert counts == {"torch non-reentrant": 1, "torch reentrant": 2, "ours": 2}
    assert torch.allclose(grads["ours"], grads["torch non-reentrant"])


def test_checkpointing_without_reentrant_arbitrary_input_output():
    """test_autograd.py TestAutograd.test_checkpointing_without_reentrant_arbitrary_input_output: a dict
    in and a dict out. use_reentrant=False supports it; ours (like use_reentrant=True) treats tensors
    nested in a dict as constants and returns only tensors or tuples: refused, with the reason."""

    class MyModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(5, 5, bias=False)

        def forward(self, dict_input):
            return {"result": self.layer(dict_input["tensor"])}

    with pytest.raises(TypeError, match="returned dict; a checkpointed function must return a tensor or a tuple"):
        checkpoint(MyModel(), {"tensor": torch.randn(5, 5)})

"""The number formats and the hardened LossScaler (efftrain_lib/number_formats.py, efftrain_lib/precision.py).

The scaler is checked against torch.amp.GradScaler("cpu") (and "cuda" when present): over runs with
injected inf/NaN gradients the scale after every update, the skipped steps and the final parameters are
identical (torch.equal: the arithmetic is the same, fp32 products and an fp64-then-fp32 reciprocal).
Tiny models (a 2-layer MLP; the tiny transformer at batch 2 x 16 for the fp16 run): the file runs in a few
seconds on 2 CPU cores.
"""

from __future__ import annotations

import inspect
import math
import struct

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib import number_formats as nf
from efftrain_lib.precision import (
    STATE_KEYS,
    LossScaler,
    autocast_op_dtypes,
    to_fp32,
)
from efftrain_lib.training import train

INF, NAN = float("inf"), float("nan")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ------------------------------------------------------------------------------------------------
# Number formats
# ------------------------------------------------------------------------------------------------


def test_format_table_matches_the_reference_numbers():
    fp32, fp16, bf16 = nf.format_table()
    assert (fp32.exponent_bits, fp32.mantissa_bits, fp32.eps) == (8, 23, 2.0**-23)
    assert (fp16.exponent_bits, fp16.mantissa_bits) == (5, 10)
    assert fp16.max == 65504.0 and fp16.min_normal == 2.0**-14 and fp16.min_subnormal == 2.0**-24
    assert fp16.eps == 2.0**-10
    assert (bf16.exponent_bits, bf16.mantissa_bits, bf16.eps) == (8, 7, 2.0**-7)
    assert bf16.min_normal == 2.0**-126 and bf16.min_subnormal == 2.0**-133
    assert math.isclose(bf16.max, 3.3895313892515355e38)
    assert fp32.min_subnormal == 2.0**-149
    assert fp16.log2_range[0] == -24.0 and 15.99 < fp16.log2_range[1] < 16


def test_bit_fields_read_the_bits():
    one = nf.bit_fields(1.0, torch.float16)
    assert (one.sign, one.exponent, one.mantissa, one.kind) == ("0", "01111", "0000000000", "normal")
    top = nf.bit_fields(65504.0, "fp16")
    assert (top.exponent, top.mantissa, top.stored) == ("11110", "1111111111", 65504.0)
    # 65520 is halfway to the next (non-existent) step: rounds to inf.
    assert nf.bit_fields(65520.0, "fp16").kind == "inf"
    tiny = nf.bit_fields(2.0**-24, "half")
    assert (tiny.exponent, tiny.mantissa, tiny.kind) == ("00000", "0000000001", "subnormal")
    assert nf.bit_fields(2.0**-26, "fp16").kind == "zero"
    neg = nf.bit_fields(-3.0, "bf16")
    assert (neg.sign, neg.exponent, neg.mantissa) == ("1", "10000000", "1000000")
    assert nf.bit_fields(NAN, "fp32").kind == "nan"
    # The fields re-assemble into the value, for fp32 compared with Python's own packing.
    fields = nf.bit_fields(0.1, "fp32")
    assert int(fields.sign + fields.exponent + fields.mantissa, 2) == struct.unpack("<I", struct.pack("<f", 0.1))[0]
    assert "2^-4" in fields.explain() and "2^-14" in tiny.explain()


def test_round_through_and_relative_error():
    assert nf.round_through(0.1, torch.bfloat16) == 0.10009765625
    assert nf.round_through(0.1, torch.float16) == 0.0999755859375
    assert nf.round_through(1 + 2.0**-11, "fp16") == 1.0  # half an eps: ties to even
    assert nf.round_through(70000.0, "fp16") == INF and nf.round_through(70000.0, "bf16") == 70144.0
    assert nf.relative_error(1e-9, "fp16") == INF  # flushed to zero
    assert nf.relative_error(0.0, "fp16") == 0.0
    assert nf.relative_error(0.1, "bf16") < 2.0**-8  # half of bf16's eps


def test_representable_fractions():
    values = torch.tensor([1e-9, 1e-6, 1e-3, 1.0, 1e5, 0.0])  # the zero is left out
    out = nf.representable_fractions(values, "fp16")
    assert out == {"underflow": 0.2, "subnormal": 0.2, "overflow": 0.2, "normal": pytest.approx(0.4)}
    scaled = nf.representable_fractions(values, "fp16", scale=2.0**10)
    assert scaled["underflow"] == 0.0 and scaled["overflow"] == 0.2  # 1e-9 saved (now subnormal), 1e5 still inf
    assert nf.representable_fractions(values, "bf16")["underflow"] == 0.0


@pytest.mark.parametrize("call, words", [
    (lambda: nf.as_dtype("fp8"), "unknown format"),
    (lambda: nf.as_dtype(torch.int8), "unsupported dtype"),
    (lambda: nf.bit_fields("1.0", "fp16"), "Python number"),
    (lambda: nf.representable_fractions(torch.zeros(3)), "non-zero"),
    (lambda: nf.representable_fractions(torch.ones(3), scale=0.0), "finite positive"),
    (lambda: nf.representable_fractions(torch.ones(3), scale=INF), "finite positive"),
])
def test_format_helpers_reject_bad_input(call, words):
    with pytest.raises(ValueError, match=words):
        call()


# ------------------------------------------------------------------------------------------------
# LossScaler vs torch.amp.GradScaler
# ------------------------------------------------------------------------------------------------


def _mlp(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).to(device)


def _run(scaler, model, *, steps=30, inject=(), clip=None, fp16=True, device="cpu", explicit_unscale=None):
    """Train `model` with `scaler`; inject inf (odd steps) or NaN (even steps) at the steps in `inject`.

    Returns (scale after each update, steps the optimizer skipped, final parameters)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=generator).to(device)
    y = torch.randn(64, 4, generator=generator).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scales, skipped = [], []
    explicit_unscale = clip is not None if explicit_unscale is None else explicit_unscale
    for step in range(steps):
        with torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=fp16):
            loss = F.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        if step in inject:
            model[0].weight.grad[0, 0] = INF if step % 2 else NAN
        if explicit_unscale:
            scaler.unscale_(optimizer)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(optimizer)
        scaler.update()
        if all(torch.equal(b, p) for b, p in zip(before, model.parameters())):
            skipped.append(step)
        scales.append(scaler.get_scale())
        optimizer.zero_grad(set_to_none=True)
    return scales, skipped, [p.detach().clone() for p in model.parameters()]


INJECT = (3, 4, 9, 10, 11, 20)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("clip", [None, 0.5], ids=["no clip", "unscale_ then clip"])
def test_equal_to_gradscaler_with_injected_overflows(device, clip):
    kwargs = dict(init_scale=2.0**10, growth_interval=3)
    ours = _run(LossScaler(**kwargs), _mlp(device=device), inject=INJECT, clip=clip, device=device)
    ref = _run(torch.amp.GradScaler(device, **kwargs), _mlp(device=device), inject=INJECT, clip=clip, device=device)
    assert ours[0] == ref[0], "scale trajectories differ"
    assert ours[1] == ref[1] == list(INJECT), "skipped steps differ"
    assert all(torch.equal(a, b) for a, b in zip(ours[2], ref[2])), "final parameters differ"
    # The trajectory really exercised both rules: it backed off and grew.
    assert min(ours[0]) < 2.0**10 < max(ours[0])


def test_equal_to_gradscaler_with_real_fp16_overflow():
    # No injection: an init_scale of 2**24 makes the fp16 backward overflow by itself until it backs off.
    kwargs = dict(init_scale=2.0**24, growth_interval=4, backoff_factor=0.25, growth_factor=4.0)
    ours = _run(LossScaler(**kwargs), _mlp(), steps=20)
    ref = _run(torch.amp.GradScaler("cpu", **kwargs), _mlp(), steps=20)
    assert ours[0] == ref[0] and ours[1] == ref[1]
    assert ours[1], "expected the first steps to overflow in fp16 at scale 2**24"
    assert all(torch.equal(a, b) for a, b in zip(ours[2], ref[2]))


def test_default_arguments_equal_gradscalers():
    ours, ref = LossScaler(), torch.amp.GradScaler("cpu")
    assert ours.state_dict() == ref.state_dict()
    assert ours.get_scale() == 65536.0


def test_scale_never_grows_to_inf():
    # 2**127 is fp32's largest power of two: growing it would give inf. GradScaler keeps it and resets.
    ours = LossScaler(init_scale=2.0**127, growth_interval=1)
    ref = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1)
    a = _run(ours, _mlp(), steps=3, fp16=False)
    b = _run(ref, _mlp(), steps=3, fp16=False)
    assert a[0] == b[0] == [2.0**127] * 3
    assert ours.growth_tracker == 0


def test_scale_arithmetic_is_fp32():
    assert to_fp32(0.1) == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert to_fp32(1e39) == INF and to_fp32(-1e39) == -INF
    scaler = LossScaler(init_scale=3.0, backoff_factor=0.1)
    scaler.scale(torch.tensor(1.0, requires_grad=True))
    _one_step(scaler, inf=True)
    assert scaler.get_scale() == to_fp32(3.0 * 0.1) != 0.30000000000000004


@pytest.mark.parametrize("values, overflow", [
    ([3e38, 3e38], False),  # finite, though the L2 norm of the tensor overflows: re-checked exactly
    ([3e38, INF], True),
    ([1.0, NAN], True),
    ([-INF, 1.0], True),
])
def test_inf_check_is_exact(values, overflow):
    results = []
    for scaler in (LossScaler(init_scale=1.0), torch.amp.GradScaler("cpu", init_scale=1.0)):
        param = nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.SGD([param], lr=0.0)
        scaler.scale(torch.tensor(1.0))  # GradScaler creates its scale tensor here
        param.grad = torch.tensor(values)
        scaler.step(optimizer)
        scaler.update()
        results.append(scaler.get_scale())
    assert results[0] == results[1] == (0.5 if overflow else 1.0)


def test_fp16_loss_is_scaled_into_fp32_like_gradscaler():
    loss = torch.tensor(2.0, dtype=torch.float16)
    ours, ref = LossScaler().scale(loss), torch.amp.GradScaler("cpu").scale(loss)
    assert ours.dtype == ref.dtype == torch.float32 and ours.item() == ref.item() == 131072.0
    pair = LossScaler(init_scale=4.0).scale([torch.tensor(1.0), (torch.tensor(2.0),)])
    assert pair[0].item() == 4.0 and pair[1][0].item() == 8.0


def test_growth_needs_consecutive_finite_steps():
    scaler = LossScaler(init_scale=8.0, growth_interval=3)
    for inf in (False, False, True, False, False):  # the overflow resets the count
        _one_step(scaler, inf=inf)
    assert scaler.get_scale() == 4.0 and scaler.growth_tracker == 2
    _one_step(scaler, inf=False)
    assert scaler.get_scale() == 8.0 and scaler.growth_tracker == 0


def test_resuming_from_state_dict_continues_identically():
    kwargs = dict(init_scale=2.0**10, growth_interval=3)
    full = _run(LossScaler(**kwargs), _mlp(), inject=INJECT, steps=24)
    # First half, save, load into a fresh scaler (ours and GradScaler), second half.
    for fresh in (lambda: LossScaler(), lambda: torch.amp.GradScaler("cpu")):
        first, model = LossScaler(**kwargs), _mlp()
        scales, skipped = _steps(first, model, range(0, 12))
        saved = first.state_dict()
        assert set(saved) == set(STATE_KEYS)
        second = fresh()
        second.load_state_dict(saved)
        more_scales, more_skipped = _steps(second, model, range(12, 24), optimizer=_steps.optimizer)
        assert scales + more_scales == full[0] and skipped + more_skipped == full[1]


def _steps(scaler, model, steps, optimizer=None):
    """Steps `steps` of the `_run` schedule (same data and injections), keeping the optimizer between calls."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=generator), torch.randn(64, 4, generator=generator)
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-2)
    _steps.optimizer = optimizer
    scales, skipped = [], []
    for step in steps:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        if step in INJECT:
            model[0].weight.grad[0, 0] = INF if step % 2 else NAN
        before = model[0].weight.detach().clone()
        scaler.step(optimizer)
        scaler.update()
        if torch.equal(before, model[0].weight):
            skipped.append(step)
        scales.append(scaler.get_scale())
        optimizer.zero_grad(set_to_none=True)
    return scales, skipped


def test_load_gradscaler_state_dict_and_back():
    ref = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    _run(ref, _mlp(), steps=3)
    ours = LossScaler()
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict() == ref.state_dict()
    back = torch.amp.GradScaler("cpu")
    back.load_state_dict(ours.state_dict())
    assert back.state_dict() == ours.state_dict()


def _one_step(scaler, inf=False, optimizer=None):
    param = nn.Parameter(torch.ones(3))
    optimizer = optimizer or torch.optim.SGD([param], lr=0.1)
    scaler.scale(param.sum()).backward()
    if inf:
        param.grad[0] = INF
    stepped = scaler.step(optimizer)
    scaler.update()
    return stepped, param


def test_step_returns_whether_it_stepped_and_unscales_itself():
    scaler = LossScaler(init_scale=1024.0)
    stepped, param = _one_step(scaler)
    assert stepped is True
    assert torch.equal(param.detach(), torch.full((3,), 0.9))  # grad 1 (unscaled by step), lr 0.1
    stepped, param = _one_step(scaler, inf=True)
    assert stepped is False and torch.equal(param.detach(), torch.ones(3))
    assert scaler.get_scale() == 512.0


def test_two_optimizers_share_one_update():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt_a, opt_b = torch.optim.SGD([a], lr=0.1), torch.optim.SGD([b], lr=0.1)
    scaler = LossScaler(init_scale=16.0)
    scaler.scale(a.sum() + b.sum()).backward()
    b.grad[0] = INF
    assert scaler.step(opt_a) is True and scaler.step(opt_b) is False
    scaler.update()
    assert scaler.get_scale() == 8.0  # an overflow in any optimizer backs off


def test_disabled_scaler_is_a_pass_through():
    scaler = LossScaler(enabled=False)
    loss = torch.tensor(3.0)
    assert scaler.scale(loss) is loss and scaler.get_scale() == 1.0 and scaler.state_dict() == {}
    stepped, param = _one_step(scaler)
    assert stepped is True and torch.equal(param.detach(), torch.full((3,), 0.9))


# ------------------------------------------------------------------------------------------------
# GradScaler's whole public interface, and what happens when the loss itself is NaN
# ------------------------------------------------------------------------------------------------


def test_every_public_method_of_gradscaler_exists_with_its_signature():
    ref = torch.amp.GradScaler
    public = sorted(n for n in dir(ref) if not n.startswith("_"))
    assert {"is_enabled", "get_growth_factor", "set_growth_interval"} <= set(public)
    missing = [n for n in public if not hasattr(LossScaler, n)]
    assert not missing, f"LossScaler lacks GradScaler's {missing}"
    for name in public:
        ours = list(inspect.signature(getattr(LossScaler, name)).parameters)
        theirs = list(inspect.signature(getattr(ref, name)).parameters)
        assert ours == theirs, f"{name}: LossScaler takes {ours}, GradScaler {theirs}"
    assert list(inspect.signature(LossScaler).parameters) == list(inspect.signature(ref).parameters)


def _scaler_pair(**kwargs):
    return LossScaler("cpu", **kwargs), torch.amp.GradScaler("cpu", **kwargs)


def test_getters_and_setters_change_the_run_as_gradscalers_do():
    trajectories = []
    for scaler in _scaler_pair(init_scale=64.0, growth_interval=3):
        assert (scaler.get_growth_factor(), scaler.get_backoff_factor(), scaler.get_growth_interval()) == (2.0, 0.5, 3)
        assert scaler.is_enabled() is True
        scales = []
        for step in range(12):
            if step == 3:  # the count is 1 here: below the new interval (see the next test for the other case)
                scaler.set_growth_factor(4.0)
                scaler.set_backoff_factor(0.25)
                scaler.set_growth_interval(2)
            scaler.scale(torch.tensor(1.0))  # GradScaler creates its scale tensor here
            _one_step(scaler, inf=step in (1, 7))
            scales.append(scaler.get_scale())
        assert (scaler.get_growth_factor(), scaler.get_backoff_factor(), scaler.get_growth_interval()) == (4.0, 0.25, 2)
        trajectories.append(scales)
    assert trajectories[0] == trajectories[1]
    assert min(trajectories[0]) < 64.0 < max(trajectories[0])  # both rules ran under the new settings


@pytest.mark.parametrize("setter, value, words", [
    ("set_growth_factor", 1.0, "growth_factor must be > 1"),
    ("set_backoff_factor", 1.5, r"backoff_factor must be in \(0, 1\)"),
    ("set_growth_interval", 0, "growth_interval must be an integer >= 1"),
    ("set_growth_interval", 2.0, "growth_interval must be an integer >= 1"),
])
def test_setters_validate_like_the_constructor(setter, value, words):
    scaler = LossScaler()
    with pytest.raises(ValueError, match=words):
        getattr(scaler, setter)(value)
    assert scaler.state_dict() == LossScaler().state_dict()  # unchanged


def test_a_growth_interval_set_below_the_count_restarts_it_where_gradscaler_stops_growing():
    ours, ref = _scaler_pair(init_scale=8.0, growth_interval=10)
    for scaler in (ours, ref):
        scaler.scale(torch.tensor(1.0))
        for _ in range(5):
            _one_step(scaler)
        scaler.set_growth_interval(2)
        for _ in range(6):
            _one_step(scaler)
    assert ours.get_scale() == 8.0 * 2**3  # the count restarted at 0: grew after steps 2, 4 and 6
    assert ref.get_scale() == 8.0 and ref._get_growth_tracker() == 11  # GradScaler's count never equals 2 again


def test_disabled_scaler_loads_a_state_dict_as_a_no_op_like_gradscaler():
    for scaler in (LossScaler(enabled=False), torch.amp.GradScaler("cpu", enabled=False)):
        assert scaler.is_enabled() is False
        scaler.load_state_dict({"scale": 4.0})  # a no-op: nothing read, nothing raised
        assert scaler.get_scale() == 1.0 and scaler.state_dict() == {}


def test_device_argument_follows_gradscaler():
    ours, ref = LossScaler("cpu", init_scale=8.0), torch.amp.GradScaler("cpu", init_scale=8.0)
    assert ours.scale(torch.tensor(2.0)).item() == ref.scale(torch.tensor(2.0)).item() == 16.0
    assert LossScaler(torch.device("cpu")).device == "cpu" and LossScaler().device is None
    with pytest.raises(TypeError, match=r"first argument is the device.*init_scale=1024.0"):
        LossScaler(1024.0)
    with pytest.raises(ValueError, match="device must be a device type"):
        LossScaler("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's behaviour")
def test_cuda_without_cuda_warns_and_disables_like_gradscaler():
    with pytest.warns(UserWarning, match="CUDA is not available.  Disabling"):
        ref = torch.amp.GradScaler("cuda")
    with pytest.warns(UserWarning, match="CUDA is not available.  Disabling"):
        ours = LossScaler("cuda")
    assert ours.is_enabled() is ref.is_enabled() is False


def test_update_takes_a_new_scale_as_a_tensor_like_gradscaler():
    ours, ref = _scaler_pair()
    ref.scale(torch.tensor(1.0))
    for scaler in (ours, ref):
        scaler.update(new_scale=torch.tensor(256.0))
    assert ours.get_scale() == ref.get_scale() == 256.0
    for bad in (torch.tensor([1.0, 2.0]), torch.tensor(2.0, requires_grad=True), torch.tensor(2)):
        with pytest.raises(ValueError, match="1-element floating-point tensor with requires_grad=False"):
            ours.update(new_scale=bad)
    with pytest.raises(ValueError, match="not representable in fp32"):
        ours.update(new_scale=1e-50)  # would round to 0 in fp32


def test_scale_of_another_iterable_is_lazy_like_gradscalers():
    ours, ref = _scaler_pair(init_scale=4.0)
    gen = (torch.tensor(float(i)) for i in range(3))
    a, b = ours.scale(t for t in gen), ref.scale(torch.tensor(float(i)) for i in range(3))
    assert [t.item() for t in a] == [t.item() for t in b] == [0.0, 4.0, 8.0]


def _nan_steps(scaler, steps, finite_from=None):
    """`steps` steps whose loss is NaN (finite from step `finite_from` on); returns the parameter."""
    param = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    for step in range(steps):
        nan = finite_from is None or step < finite_from
        scaler.scale(param.sum() * (NAN if nan else 1.0)).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    return param


def test_a_loss_that_stays_nan_gets_an_error_naming_the_cause_not_a_zero_division():
    scaler = LossScaler()
    _nan_steps(scaler, 165)  # 2**16 halved 165 times: 2**-149, fp32's smallest number
    assert scaler.get_scale() == 2.0**-149
    with pytest.raises(RuntimeError, match=r"underflowed to 0 after 166 consecutive steps with inf/NaN gradients"
                                           r".*the loss itself.*is NaN/inf: loss scaling cannot fix that"):
        _nan_steps(scaler, 1)
    assert scaler.get_scale() == 2.0**-149  # left at its last usable value


def test_gradscaler_in_the_same_situation_stays_at_zero_and_then_writes_nan_into_the_weights():
    # What the LossScaler docstring says of GradScaler, measured (torch 2.13, CPU).
    ref = torch.amp.GradScaler("cpu")
    param = _nan_steps(ref, 200, finite_from=170)
    assert ref.get_scale() == 0.0  # no error; growth multiplies 0
    assert torch.isnan(param).all()  # once the loss is finite, 0 * (1/0) gradients were stepped
    ours = LossScaler()
    with pytest.raises(RuntimeError, match="underflowed"):
        _nan_steps(ours, 200, finite_from=170)
    doc = LossScaler.__doc__
    assert "166th" in doc and "weights" in doc and "become NaN" in doc


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    (dict(growth_factor=1.0), "growth_factor must be > 1"),
    (dict(growth_factor=0.5), "growth_factor must be > 1"),
    (dict(backoff_factor=1.0), r"backoff_factor must be in \(0, 1\)"),
    (dict(backoff_factor=0.0), r"backoff_factor must be in \(0, 1\)"),
    (dict(backoff_factor=1.5), r"backoff_factor must be in \(0, 1\)"),
    (dict(growth_interval=0), "growth_interval must be an integer >= 1"),
    (dict(growth_interval=2.5), "growth_interval must be an integer >= 1"),
    (dict(init_scale=INF), "init_scale must be a finite number > 0"),
    (dict(init_scale=NAN), "init_scale must be a finite number > 0"),
    (dict(init_scale=0.0), "init_scale must be a finite number > 0"),
    (dict(init_scale=1e39), "not representable in fp32"),
    (dict(init_scale="65536"), "init_scale must be a number"),
])
def test_constructor_rejects_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LossScaler(**kwargs)


def test_unscale_twice_before_update_raises():
    param = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scaler = LossScaler(init_scale=4.0)
    scaler.scale(param.sum()).backward()
    scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="already been called.*twice"):
        scaler.unscale_(optimizer)
    assert torch.equal(param.grad, torch.ones(3))  # divided once, not twice
    scaler.step(optimizer)
    with pytest.raises(RuntimeError, match="after step"):
        scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(optimizer)
    scaler.update()
    scaler.scale(param.sum()).backward()
    scaler.unscale_(optimizer)  # allowed again after update()


def test_fp16_parameters_are_refused_with_the_reason():
    param = nn.Parameter(torch.ones(3, dtype=torch.float16))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scaler = LossScaler()
    param.grad = torch.ones(3, dtype=torch.float16)
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients.*fp32 master weights"):
        scaler.unscale_(optimizer)
    with pytest.raises(ValueError, match="FP16"):
        scaler.step(optimizer)


def test_other_misuse_is_named():
    scaler = LossScaler()
    with pytest.raises(RuntimeError, match="No inf checks were recorded"):
        scaler.update()
    param = nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    with pytest.raises(RuntimeError, match="no gradients.*backward"):
        scaler.unscale_(optimizer)
    with pytest.raises(ValueError, match="Optimizer"):
        scaler.unscale_(object())
    with pytest.raises(ValueError, match="tensor"):
        scaler.scale(3.0)
    with pytest.raises(ValueError, match="new_scale"):
        scaler.update(new_scale=0.0)
    with pytest.raises(ValueError, match="lacks \\['_growth_tracker'\\]"):
        scaler.load_state_dict({k: 1 for k in STATE_KEYS[:-1]})
    with pytest.raises(ValueError, match="empty"):
        scaler.load_state_dict({})
    with pytest.raises(ValueError, match="growth_factor must be > 1"):
        scaler.load_state_dict({"scale": 2.0, "growth_factor": 0.5, "backoff_factor": 0.5,
                                "growth_interval": 5, "_growth_tracker": 0})
    scaler.scale(param.sum()).backward()
    with pytest.raises(ValueError, match="closure"):
        scaler.step(optimizer, closure=lambda: None)


def test_update_with_new_scale():
    scaler = LossScaler()
    scaler.update(new_scale=128.0)
    assert scaler.get_scale() == 128.0


# ------------------------------------------------------------------------------------------------
# Training with a scaler, and autocast's dtypes
# ------------------------------------------------------------------------------------------------


def _tiny_lm_run(scaler, autocast_dtype, steps=4):
    from efftrain_lib import data
    from efftrain_lib.models import TinyConfig, TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer(TinyConfig(hidden_size=32, n_layers=1, n_heads=2, ffn_dim=64, max_seq_len=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    get_batch = data.batch_sampler(data.encode(data.load_text("sonnets"))[:4000], batch_size=2, seq_len=16)
    log = train(model, get_batch, steps=steps, optimizer=optimizer, autocast_dtype=autocast_dtype,
                                scaler=scaler, max_grad_norm=1.0, progress=False)
    return log, model


def test_train_with_fp16_loss_scaler_equals_gradscaler_run():
    kwargs = dict(init_scale=2.0**20, growth_interval=2)
    ours, m1 = _tiny_lm_run(LossScaler(**kwargs), torch.float16)
    ref, m2 = _tiny_lm_run(torch.amp.GradScaler("cpu", **kwargs), torch.float16)
    assert ours.losses == ref.losses and ours.scales == ref.scales and ours.stepped == ref.stepped
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert len(ours.step_seconds) == 4 and ours.median_step_seconds > 0


def test_train_in_bf16_and_fp32_without_scaler():
    for dtype in (torch.bfloat16, None):
        log, _ = _tiny_lm_run(None, dtype, steps=2)
        assert log.scales == [1.0, 1.0] and log.skipped_steps == [] and all(math.isfinite(v) for v in log.losses)
    with pytest.raises(ValueError, match="autocast_dtype"):
        train(_mlp(), lambda s: None, steps=1, optimizer=None, autocast_dtype=torch.float64)


def test_autocast_op_dtypes_on_cpu():
    table = autocast_op_dtypes("cpu", torch.bfloat16)
    for op in ("linear", "matmul", "bmm", "scaled_dot_product_attention"):
        assert table[op] == torch.bfloat16, op
    for op in ("cross_entropy", "mse_loss", "softmax", "layer_norm"):
        assert table[op] == torch.float32, op  # from fp32 inputs
    low_in = autocast_op_dtypes("cpu", torch.bfloat16, input_dtype=torch.bfloat16)
    assert low_in["softmax"] == torch.bfloat16  # CPU keeps softmax's input dtype (CUDA forces fp32)
    assert low_in["cross_entropy"] == torch.float32  # losses are upcast


# ------------------------------------------------------------------------------------------------
# The chapter's slider logic (efftrain_lib/precision_explorer.py)
# ------------------------------------------------------------------------------------------------


def test_collect_gradients_and_histogram():
    from matplotlib.figure import Figure

    from efftrain_lib import precision_explorer as pe
    from efftrain_lib.models import TinyConfig, TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer(TinyConfig(hidden_size=16, n_layers=1, n_heads=2, ffn_dim=32, max_seq_len=8))
    batch = (torch.randint(0, 96, (2, 8)), torch.randint(0, 96, (2, 8)))
    grads = pe.collect_gradients(model, batch)
    assert set(grads) == {pe.ACTIVATION_GRADS, pe.WEIGHT_GRADS}
    assert grads[pe.WEIGHT_GRADS].numel() == sum(p.numel() for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())  # left clean
    ax = Figure().add_subplot()
    fractions = pe.draw_gradient_histogram(ax, grads, log2_scale=16, dtype="fp16")
    expected = nf.representable_fractions(grads[pe.WEIGHT_GRADS], "fp16", scale=2.0**16)
    assert fractions[pe.WEIGHT_GRADS] == expected
    assert "2^16" in ax.get_title() and len(pe.render_png(lambda a: pe.draw_scale_sweep(a, grads[pe.WEIGHT_GRADS],
                                                                                        range(0, 8)))) > 1000
    with pytest.raises(ValueError, match="pair"):
        pe.collect_gradients(model, batch[0])


def test_scale_sweep_and_window():
    from efftrain_lib import precision_explorer as pe

    values = torch.tensor([2.0**-30, 2.0**-20, 1.0, 2.0**10])
    sweep = pe.scale_sweep(values, [0, 6, 10], "fp16")
    assert sweep["underflow"] == [0.25, 0.0, 0.0]  # 2^-30 -> 2^-24 at scale 2^6
    assert sweep["overflow"] == [0.0, 0.25, 0.25]  # 2^10 * 2^6 = 65536 > 65504
    assert pe.format_window("fp16") == {"zero": -25.0, "min_subnormal": -24.0, "min_normal": -14.0,
                                        "max": math.log2(65504)}
    with pytest.raises(ValueError, match="non-zero"):
        pe.log2_magnitudes(torch.zeros(3))


def test_rounding_rows_and_parse_value():
    from efftrain_lib import precision_explorer as pe

    rows = {r["format"]: r for r in pe.rounding_rows(70000.0)}
    assert rows["fp16"]["kind"] == "inf" and rows["fp16"]["relative error"] == INF
    assert rows["bf16"]["stored"] == 70144.0 and rows["fp32"]["relative error"] == 0.0
    assert "fp16" in pe.rounding_table(0.1)
    assert pe.parse_value("2**-24") == 2.0**-24 and pe.parse_value(" 1e-8 ") == 1e-8
    with pytest.raises(ValueError, match="cannot read"):
        pe.parse_value("abc")


def test_widgets_build():
    pytest.importorskip("ipywidgets")
    from efftrain_lib import precision_explorer as pe

    grads = {pe.WEIGHT_GRADS: torch.tensor([1e-3, 1e-6, 1e-9])}
    assert "Loss-scale explorer" in repr(pe.loss_scale_explorer(grads))
    assert "Rounding explorer" in repr(pe.rounding_explorer("1e-8"))


def test_unscale_without_the_fused_kernel_gives_the_same_gradients_and_verdict(monkeypatch):
    """The public-foreach fallback (for torch builds without the fused kernel) agrees with the fused path."""
    import efftrain_lib.precision as precision

    def unscaled(grad_values):
        param = torch.nn.Parameter(torch.zeros(len(grad_values)))
        param.grad = torch.tensor(grad_values)
        optimizer = torch.optim.SGD([param], lr=0.1)
        scaler = precision.LossScaler(init_scale=4.0)
        scaler.unscale_(optimizer)
        return param.grad.clone(), scaler.step(optimizer)

    fused = [unscaled([1.0, -8.0]), unscaled([1.0, float("inf")])]
    monkeypatch.delattr(torch, "_amp_foreach_non_finite_check_and_unscale_")
    fallback = [unscaled([1.0, -8.0]), unscaled([1.0, float("inf")])]
    assert torch.equal(fused[0][0], torch.tensor([0.25, -2.0])) and fused[0][1] is True
    assert torch.equal(fallback[0][0], fused[0][0]) and fallback[0][1] is True
    assert fused[1][1] is False and fallback[1][1] is False, "an inf gradient must skip the step on both paths"

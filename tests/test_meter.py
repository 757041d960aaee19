"""Tests of efftrain_lib.meter: exact CPU accounting, the saved-tensor counter, the step meter.

Byte counts are compared exactly wherever the expected tensors can be written down by hand;
the one ratio (bf16 vs fp32 activations) states its tolerance.
"""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint_sequential

from efftrain_lib import meter as meter_module
from efftrain_lib.meter import (
    CATEGORIES,
    MIB,
    SOURCE_CPU,
    MemoryBreakdown,
    MemoryMeter,
    SavedTensorCounter,
    gradient_bytes,
    measure_step,
    optimizer_state_bytes,
    parameter_bytes,
    profiler_peak_bytes,
)
from efftrain_lib.models import TinyConfig, TinyTransformer
from efftrain_lib.training import train

F32 = 4
BF16 = 2

SMALL = TinyConfig(vocab_size=32, hidden_size=32, n_layers=2, n_heads=2, ffn_dim=64, max_seq_len=16)


def two_layer_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5, bias=False))


def tiny_batch(config: TinyConfig = SMALL, batch: int = 4, step: int = 0):
    generator = torch.Generator().manual_seed(step)
    inputs = torch.randint(0, config.vocab_size, (batch, config.max_seq_len), generator=generator)
    return inputs, torch.roll(inputs, -1, dims=1)


def tiny_model(config: TinyConfig = SMALL) -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(config)


def linear_weight_elements(model: nn.Module, trainable: bool | None = None) -> int:
    return sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, nn.Linear) and (trainable is None or m.weight.requires_grad == trainable)
    )


# ----------------------------------------------------------------------------------------------
# Static accounting
# ----------------------------------------------------------------------------------------------


def test_parameter_and_gradient_bytes_are_exact():
    net = two_layer_net()
    elements = 10 * 20 + 20 + 20 * 5  # W1, b1, W2 (no bias)
    assert parameter_bytes(net) == elements * F32 == 1280
    assert gradient_bytes(net) == 0  # no backward yet: no .grad tensors exist
    net(torch.randn(3, 10)).sum().backward()
    assert gradient_bytes(net) == elements * F32


def test_frozen_parameters_have_no_gradient_or_optimizer_bytes():
    net = two_layer_net()
    net[0].requires_grad_(False)  # freeze W1 and b1: 220 elements
    trainable = 20 * 5
    assert parameter_bytes(net) == 320 * F32
    assert parameter_bytes(net, trainable_only=True) == trainable * F32
    # Even an optimizer given every parameter keeps no state for ones that never get a gradient.
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(3, 10)).sum().backward()
    optimizer.step()
    assert gradient_bytes(net) == trainable * F32
    assert optimizer_state_bytes(optimizer) == 2 * trainable * F32 + 1 * F32  # m, v + one step scalar


def test_adam_state_is_two_fp32_tensors_per_parameter_plus_step_scalars():
    # How `step` counts: torch keeps a 0-dim fp32 `step` tensor per parameter tensor (CPU, not
    # capturable/fused). It is a real tensor in optimizer.state, so the meter counts its 4 bytes.
    net = two_layer_net()
    optimizer = torch.optim.Adam(net.parameters())
    assert optimizer_state_bytes(optimizer) == 0  # state is created lazily by the first step
    net(torch.randn(3, 10)).sum().backward()
    optimizer.step()
    elements, tensors = 320, 3
    assert optimizer_state_bytes(optimizer) == 2 * elements * F32 + tensors * F32


def test_sgd_state_bytes():
    net = two_layer_net()
    plain = torch.optim.SGD(net.parameters(), lr=0.1)
    momentum = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(3, 10)).sum().backward()
    plain.step()
    momentum.step()
    assert optimizer_state_bytes(plain) == 0
    assert optimizer_state_bytes(momentum) == 320 * F32  # one momentum buffer per element


def test_tied_weights_count_once():
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    model = nn.ModuleDict({"embed": embed, "head": head})
    assert parameter_bytes(model) == 10 * 4 * F32


def test_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="nn.Module"):
        parameter_bytes([torch.zeros(3)])
    with pytest.raises(ValueError, match="nn.Module"):
        gradient_bytes("model")
    with pytest.raises(ValueError, match="Optimizer"):
        optimizer_state_bytes(two_layer_net())


def test_breakdown_total_dict_and_table():
    b = MemoryBreakdown(weights=MIB, gradients=MIB, optimizer_state=2 * MIB, activations=3 * MIB, cast_weights=MIB)
    assert b.total == 8 * MIB
    d = b.as_dict()
    assert [k for k in d if k in CATEGORIES] == list(CATEGORIES)
    assert d["total"] == 8 * MIB and d["source"] == SOURCE_CPU
    table = str(b)
    assert "activations" in table and "3.000 MiB" in table and "8.000 MiB" in table
    assert table.splitlines()[-1] == f"source: {SOURCE_CPU}"
    with pytest.raises(ValueError, match="non-negative"):
        MemoryBreakdown(weights=-1)


# ----------------------------------------------------------------------------------------------
# The saved-tensor counter
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_model", [True, False])
def test_linear_relu_saves_exactly_input_and_output(with_model):
    # Linear saves its input (for the weight gradient) and W.t() (a parameter: excluded);
    # ReLU saves its output. Nothing else.
    torch.manual_seed(0)
    layer = nn.Linear(8, 16)
    x = torch.randn(4, 8)
    with SavedTensorCounter(layer if with_model else None) as counter:
        loss = torch.relu(layer(x)).sum()
    expected = 4 * 8 * F32 + 4 * 16 * F32
    assert counter.activation_bytes == expected == 384
    assert counter.cast_weight_bytes == 0
    loss.backward()
    assert counter.activation_bytes == 0  # released as backward ran, though we still hold x
    assert counter.peak_bytes == counter.saved_activation_bytes == expected


def test_shared_input_is_counted_once():
    # q, k and v projections all save the same input: one storage, counted once.
    torch.manual_seed(0)
    q, k, v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with SavedTensorCounter() as counter:
        loss = (q(x) + k(x) + v(x)).sum()
    assert counter.activation_bytes == 4 * 8 * F32
    loss.backward()
    assert counter.activation_bytes == 0


def test_counter_holds_no_references():
    # The counter keeps only weak references: the saved tensors die when backward frees them.
    torch.manual_seed(0)
    layer = nn.Linear(8, 16)
    with SavedTensorCounter() as counter:
        loss = torch.relu(layer(torch.randn(4, 8))).sum()
    saved = list(counter._refs)  # the counter keys its bookkeeping by weak references
    assert len(saved) == 2 and all(isinstance(ref, weakref.ref) and ref() is not None for ref in saved)
    loss.backward()
    assert all(ref() is None for ref in saved)
    assert counter.activation_bytes == 0 and not counter._refs


def test_graph_dropped_without_backward_is_freed():
    # A pack hook that returned saved outputs themselves would leak the whole graph here
    # (a cycle through C++ that gc cannot see): every tensor must die with the last reference.
    torch.manual_seed(0)
    layer = nn.Linear(8, 16)
    with SavedTensorCounter(layer) as counter:
        x = torch.randn(4, 8, requires_grad=True)
        hidden = layer(x)
        out = torch.relu(hidden)
        loss = out.sum()
    assert counter.activation_bytes == 4 * 8 * F32 + 4 * 16 * F32
    refs = [weakref.ref(t) for t in (x, hidden, out, loss)]
    del x, hidden, out, loss
    assert [ref() for ref in refs] == [None] * 4  # freed at once, not even gc.collect() needed
    assert counter.activation_bytes == 0


def test_retained_graph_keeps_its_tensors_counted():
    torch.manual_seed(0)
    layer = nn.Linear(8, 16)
    with SavedTensorCounter(layer) as counter:
        loss = torch.relu(layer(torch.randn(4, 8))).sum()
    loss.backward(retain_graph=True)
    assert counter.activation_bytes == 384  # the graph still holds them: still memory
    del loss
    assert counter.activation_bytes == 0


@pytest.mark.parametrize("frozen", [False, True])
def test_cast_weights_are_counted_separately(frozen):
    # Under bf16 autocast Linear runs on a bf16 copy of the weight, which autograd saves to
    # compute the input gradient. It is a weight, not an activation.
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    layer.requires_grad_(not frozen)
    x = torch.randn(16, 64, requires_grad=True)
    with SavedTensorCounter(layer) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        loss = out.sum()
    assert counter.cast_weight_bytes == 64 * 32 * BF16  # the bias copy is not needed by backward
    # The activation is the bf16 copy of x, saved for the weight gradient (only if trainable).
    assert counter.activation_bytes == (0 if frozen else 16 * 64 * BF16)
    loss.backward()
    assert counter.cast_weight_bytes == 0


def test_tiny_transformer_cast_weights_are_exactly_the_linear_weights_in_bf16():
    model = tiny_model()
    for name, param in model.named_parameters():
        param.requires_grad_("mlp" not in name)  # LoRA-like: some Linear layers frozen
    inputs, targets = tiny_batch()
    record = measure_step(model, None, (inputs, targets), autocast_dtype=torch.bfloat16)
    assert record.saved_cast_weight_bytes == linear_weight_elements(model) * BF16
    assert record.sample("forward").cast_weights == linear_weight_elements(model) * BF16
    assert record.sample("backward").cast_weights == 0


def test_bf16_autocast_halves_activations_of_a_linear_stack():
    # A Linear/ReLU stack under bf16 autocast saves bf16 copies of exactly the tensors fp32
    # saves, so the ratio is 0.5; tolerance 2% in case a torch release saves one more scalar.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))
    x = torch.randn(32, 64)
    saved = {}
    for use_autocast in (False, True):
        with SavedTensorCounter(net) as counter:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_autocast):
                loss = net(x).sum()
        saved[use_autocast] = counter.activation_bytes
        loss.backward()
    assert saved[False] == (32 * 64 + 32 * 256 + 32 * 256) * F32
    assert saved[True] / saved[False] == pytest.approx(0.5, rel=0.02)


def test_bf16_autocast_on_the_tiny_transformer_keeps_fp32_islands():
    # RMSNorm normalises in fp32 and the loss runs in fp32, so the transformer's bf16 saving is
    # less than half: measured 0.68 for this config. Bounds 0.55-0.80 leave room for torch changes.
    model = tiny_model()
    batch = tiny_batch()
    fp32 = measure_step(model, None, batch).sample("forward").activations
    bf16 = measure_step(model, None, batch, autocast_dtype=torch.bfloat16).sample("forward").activations
    assert 0.55 < bf16 / fp32 < 0.80


@pytest.fixture(scope="module")
def ffn_blocks() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)) for _ in range(8)])


@pytest.mark.parametrize("segments, expected_mib", [(None, 9.0), (2, 4.625), (4, 2.625), (8, 2.0)])
def test_checkpointing_matches_the_reference_figures(ffn_blocks, segments, expected_mib):
    # REFERENCE.md: 8 FFN blocks 512->2048->512 keep 9.00 MiB plain, 4.62 / 2.62 / 2.00 MiB at
    # 2 / 4 / 8 segments (64 rows, GELU). The counter must reproduce them exactly.
    blocks = ffn_blocks
    x = torch.randn(64, 512)
    with SavedTensorCounter(blocks) as counter:
        if segments is None:
            out = blocks(x)
        else:
            out = checkpoint_sequential(blocks, segments, x, use_reentrant=False)
    assert counter.activation_bytes == expected_mib * MIB
    out.sum().backward()
    assert counter.activation_bytes == 0


def test_module_attribution_adds_up():
    model = tiny_model()
    record = measure_step(model, None, tiny_batch())
    by_module = record.activations_by_module
    assert sum(by_module.values()) == record.saved_activation_bytes
    assert by_module["layers.0.mlp"] == by_module["layers.1.mlp"] > 0  # identical layers


# ----------------------------------------------------------------------------------------------
# The step meter
# ----------------------------------------------------------------------------------------------


def test_step_samples_follow_the_training_step():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    record = measure_step(model, optimizer, tiny_batch())
    weights = parameter_bytes(model)
    n_tensors = len(list(model.parameters()))
    adam = 2 * weights + n_tensors * F32

    assert [label for label, _ in record.samples] == ["start", "forward", "backward", "optimizer step", "end"]
    start, forward, backward, opt, end = (b for _, b in record.samples)
    assert all(b.source == SOURCE_CPU and b.weights == weights for _, b in record.samples)
    assert start.total == weights
    assert forward.activations == record.saved_activation_bytes > 0
    assert forward.gradients == 0
    assert backward.activations == 0 and backward.gradients == weights
    assert opt.optimizer_state == adam and opt.gradients == weights
    assert end.gradients == 0  # zero_grad(set_to_none=True)
    assert record.peak_bytes == max(event.total_bytes for event in record.timeline())


def test_timeline_rises_during_forward_and_falls_during_backward():
    model = tiny_model()
    record = measure_step(model, torch.optim.AdamW(model.parameters()), tiny_batch())
    timeline = record.timeline()
    phases = list(dict.fromkeys(event.phase for event in timeline))
    assert phases == ["start", "forward", "backward", "optimizer step", "end"]
    assert [e.event_index for e in timeline] == list(range(len(timeline)))

    forward = [e.breakdown.activations for e in timeline if e.phase == "forward"]
    backward = [e.breakdown for e in timeline if e.phase == "backward"]
    assert len(forward) > 10 and forward == sorted(forward)  # builds up, tensor by tensor
    assert forward[-1] == record.saved_activation_bytes
    acts = [b.activations for b in backward]
    grads = [b.gradients for b in backward]
    assert acts == sorted(acts, reverse=True) and acts[-1] == 0  # released as backward proceeds
    assert grads == sorted(grads) and grads[-1] == parameter_bytes(model)
    assert len(set(acts)) > 10  # released gradually, not all at once at the end


def test_meter_in_the_training_loop():
    model = tiny_model()
    meter = MemoryMeter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, lambda step: tiny_batch(step=step), steps=3, optimizer=optimizer, meter=meter, progress=False)
    assert [r.index for r in meter.records] == [0, 1, 2]
    peaks = meter.peaks()
    assert peaks[0] < peaks[1] == peaks[2]  # Adam's state exists from the first optimizer step on
    assert peaks[1] - peaks[0] == optimizer_state_bytes(optimizer)
    assert meter.timeline(0) == meter.records[0].timeline()
    assert meter.last is meter.records[-1]


def test_meter_misuse_gives_clear_errors():
    meter = MemoryMeter()
    model = tiny_model()
    with pytest.raises(RuntimeError, match="outside"):
        meter.mark("forward")
    with pytest.raises(ValueError, match="no step"):
        meter.timeline()
    with meter.step(model):
        with pytest.raises(ValueError, match="label"):
            meter.mark("")
        with pytest.raises(ValueError, match="reserved"):
            meter.mark("start")
        with pytest.raises(RuntimeError, match="nest"):
            with meter.step(model):
                pass
    with pytest.raises(ValueError, match="out of range"):
        meter.timeline(5)
    with pytest.raises(ValueError, match="no sample"):
        meter.last.sample("backward")
    with pytest.raises(ValueError, match="Module"):
        with meter.step("model"):
            pass
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            MemoryMeter("cuda")


def test_two_meters_nested_is_an_error_not_a_silent_zero():
    # torch's saved-tensor hooks do not stack: inside the inner meter the outer one would see nothing.
    model = tiny_model()
    outer, inner = MemoryMeter(), MemoryMeter()
    with outer.step(model):
        with pytest.raises(RuntimeError, match="already recording in this thread"):
            with inner.step(model):
                pass
        with pytest.raises(RuntimeError, match="already recording"):
            with SavedTensorCounter(model):
                pass
        loss = model(tiny_batch()[0]).float().mean()  # the outer meter still sees everything
        outer.mark("forward")
    assert outer.last.sample("forward").activations > 0
    del loss
    with inner.step(model):  # once the outer one is finished, the inner one works
        model(tiny_batch()[0]).float().mean().backward()
    assert inner.last.peak.activations > 0


def test_a_failing_step_keeps_its_partial_record():
    model = tiny_model()
    meter = MemoryMeter()
    with pytest.raises(FloatingPointError):
        with meter.step(model):
            loss = model(tiny_batch()[0]).float().mean()
            meter.mark("forward")
            raise FloatingPointError("loss is NaN")
    record = meter.last
    assert record.error == "FloatingPointError: loss is NaN"
    assert [label for label, _ in record.samples] == ["start", "forward", "end"]
    assert record.peak.activations > 0
    del loss
    measure_step(model, None, tiny_batch(), meter=meter)  # the meter is usable again
    assert meter.last.error is None and len(meter.records) == 2


def test_allocator_figures_fill_other():
    # On CUDA a sample carries torch.cuda.memory_allocated; what accounting cannot explain is
    # 'other'. (The real thing is checked by test_cuda_step_matches_the_allocator on a GPU.)
    event = ["forward", 100, 0, 50, 300, 20, 1000]
    b = meter_module._breakdown(event, meter_module.SOURCE_CUDA)
    assert (b.other, b.total) == (530, 1000)
    assert meter_module._breakdown(["x", 100, 0, 0, 0, 0, 90], "s").other == 0  # never negative


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_matches_the_allocator():
    model = tiny_model().cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    record = measure_step(model, optimizer, tiny_batch())
    assert record.source == meter_module.SOURCE_CUDA
    forward = record.sample("forward")
    assert forward.weights == parameter_bytes(model)
    assert forward.activations > 0 and forward.total >= forward.weights + forward.activations
    assert record.peak.source == meter_module.SOURCE_CUDA_PEAK
    assert record.peak_bytes >= max(event.total_bytes for event in record.timeline())
    torch.cuda.reset_peak_memory_stats()


def test_profiler_peak_sees_the_allocator(capfd):
    def work():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # 4 MiB more while a is alive: the peak
        del a
        return (b + 1).sum().item()

    figure = profiler_peak_bytes(work)
    assert 8 * MIB <= figure.peak_bytes <= 8 * MIB + 64 * 1024  # plus a few scalars
    assert "torch.profiler" in figure.source and "MiB" in str(figure)
    assert capfd.readouterr().err == ""  # KINETO_LOG_LEVEL keeps the profiler quiet
    with pytest.raises(ValueError, match="callable"):
        profiler_peak_bytes(42)

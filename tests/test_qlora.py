"""QLoRA's library: block-wise quantization and NF4 against torchao, the 4-bit layer against LoRA, its memory
against the meter and the estimator, the 8-bit optimizer against torch's AdamW, merging, bad input."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn as nn

from efftrain_lib import data
from efftrain_lib.lora import LoRALinear
from efftrain_lib.meter import optimizer_state_bytes
from efftrain_lib.models import load_pretrained
from efftrain_lib.nf4_reference import torchao_nf4
from efftrain_lib.optim8bit import AdamW8bit
from efftrain_lib.qlora import QLoRALinear, QuantizedLinear, apply_qlora, merge_qlora, qlora_layers
from efftrain_lib.quant_math import bits_per_parameter, blockwise_bytes
from efftrain_lib import quant_math
from efftrain_lib.quantization import (
    NF4_PUBLISHED,
    QuantizedTensor,
    double_dequantize,
    double_quantize,
    dequantize_blockwise_absmax,
    fp4_code_values,
    int4_code_values,
    nf4_code_values,
    pack_4bit,
    quantize_blockwise_absmax,
    unpack_4bit,
)
from efftrain_lib.saved_tensors import SavedTensorCounter
from efftrain_lib.training import train


def normal_weight(rows=256, cols=512, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.02


# ------------------------------------------------------------------------------------ code tables --
def test_nf4_built_from_its_definition_equals_the_published_table():
    nf4 = nf4_code_values()
    assert nf4.dtype == torch.float32 and nf4.shape == (16,)
    assert (nf4 - torch.tensor(NF4_PUBLISHED)).abs().max() <= 1e-6
    assert nf4[7] == 0 and (nf4 < 0).sum() == 7 and (nf4 > 0).sum() == 8  # asymmetric, exact zero
    assert nf4[0] == -1 and nf4[-1] == 1


def test_int4_and_fp4_tables():
    assert torch.equal(int4_code_values() * 7, torch.arange(-8, 8, dtype=torch.float32))
    fp4 = fp4_code_values() * 6
    assert sorted(set(fp4.abs().tolist())) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]  # E2M1
    assert (fp4 == 0).sum() == 2  # +0 and -0: two codes, one value


# ------------------------------------------------------------------------- equality with torchao --
@pytest.mark.parametrize("outliers", [False, True])
def test_codes_scales_and_dequantized_weight_equal_torchao(outliers):
    w = normal_weight()
    if outliers:
        w.view(-1)[::997] *= 40
    ref = torchao_nf4(w, 64, 256)
    indices, absmax = quantize_blockwise_absmax(w, 64, ref.table)  # torchao's own (rounded) table
    assert torch.equal(indices, ref.indices) and torch.equal(absmax, ref.absmax)
    dq = double_quantize(absmax, 256)
    assert torch.equal(dq.codes, ref.scale_codes) and torch.equal(dq.factors, ref.scale_factors)
    assert torch.equal(dq.mean, ref.scale_mean)
    ours = dequantize_blockwise_absmax(indices, double_dequantize(*dq, 256), ref.table, 64, w.shape)
    assert (ours - ref.dequantized).abs().max().item() == 0.0  # the same arithmetic, bit for bit
    stored = QuantizedTensor.quantize(w, ref.table, block_size=64, double_quant_block=256)
    assert torch.equal(stored.parts["codes"], ref.tensor.quantized_data)  # same nibble layout
    assert stored.nbytes == ref.nbytes


def test_the_only_difference_from_torchao_is_its_rounded_table():
    """With the full-precision NF4 table a few codes move to a neighbour: exactly the values that lie between
    torchao's rounded midpoint and the exact one."""
    w = normal_weight()
    ref = torchao_nf4(w, 64, 256)
    exact = nf4_code_values()
    assert (ref.table - exact).abs().max() <= 5e-5 + 1e-6  # rounded to 4 decimals (+ float32 rounding)
    indices, absmax = quantize_blockwise_absmax(w, 64, exact)
    moved = indices != ref.indices
    assert 0 < int(moved.sum()) < w.numel() * 1e-3
    assert ((indices.long() - ref.indices.long())[moved].abs() == 1).all()
    scaled = (w.reshape(-1, 64) / absmax[:, None]).reshape(-1)[moved]
    low = torch.minimum(indices, ref.indices)[moved].long()
    mid_ours, mid_ref = (exact[low] + exact[low + 1]) / 2, (ref.table[low] + ref.table[low + 1]) / 2
    assert ((scaled - mid_ours) * (scaled - mid_ref) <= 0).all()  # between the two midpoints


# ------------------------------------------------------------------------------- bits per param --
def test_bits_per_parameter_measured_from_the_stored_bytes():
    w = normal_weight(1024, 1024)
    plain = QuantizedTensor.quantize(w, "nf4", block_size=64)
    double = QuantizedTensor.quantize(w, "nf4", block_size=64, double_quant_block=256)
    assert plain.nbytes * 8 / w.numel() == 4.5
    assert abs(double.nbytes * 8 / w.numel() - (4 + 8 / 64 + 32 / (64 * 256))) < 1e-4
    assert bits_per_parameter(4, 64) == 4.5 and abs(bits_per_parameter(4, 64, double_quant_block=256) - 4.127) < 1e-3
    for q in (plain, double):
        assert q.nbytes == blockwise_bytes(w.numel(), 4, 64, q.double_quant_block)


def test_double_quantization_allows_a_partial_last_group_and_constant_scales():
    absmax = torch.rand(300) + 0.5
    back = double_dequantize(*double_quantize(absmax, 256), 256)
    assert back.shape == (300,) and (back - absmax).abs().max() < 1e-2
    constant = torch.full((10,), 0.25)
    assert torch.equal(double_dequantize(*double_quantize(constant), 256), constant)  # no inf factor


def test_round_trip_error_is_bounded_by_half_a_code_gap():
    w = normal_weight()
    code = nf4_code_values()
    indices, absmax = quantize_blockwise_absmax(w, 64, code)
    back = dequantize_blockwise_absmax(indices, absmax, code, 64, w.shape)
    half_gap = (code[1:] - code[:-1]).max() / 2
    assert ((back - w).abs().reshape(-1, 64) <= half_gap * absmax[:, None] + 1e-7).all()


def test_pack_and_unpack_4bit():
    indices = torch.randint(0, 16, (101,), dtype=torch.uint8)
    packed = pack_4bit(indices)
    assert packed.numel() == 51 and torch.equal(unpack_4bit(packed, 101), indices)
    with pytest.raises(ValueError, match="0..15"):
        pack_4bit(torch.tensor([16], dtype=torch.uint8))


@pytest.mark.parametrize("call, error, words", [
    (lambda: quantize_blockwise_absmax(torch.randn(100), 64, nf4_code_values()), ValueError, "multiple of block_size"),
    (lambda: quantize_blockwise_absmax(torch.ones(64, dtype=torch.int64), 64, nf4_code_values()), TypeError, "floating"),
    (lambda: quantize_blockwise_absmax(torch.randn(64), 0, nf4_code_values()), ValueError, "positive integer"),
    (lambda: quantize_blockwise_absmax(torch.randn(64), -1, nf4_code_values()), ValueError, "positive integer"),
    (lambda: quantize_blockwise_absmax(torch.randn(64), 64, nf4_code_values().flip(0)), ValueError, "sorted"),
    (lambda: quantize_blockwise_absmax(torch.randn(64), 64, nf4_code_values()[:15]), ValueError, "2^b"),
    (lambda: quantize_blockwise_absmax(torch.randn(64), 64, torch.zeros(512)), ValueError, "2^b"),
    (lambda: quantize_blockwise_absmax(torch.full((64,), float("nan")), 64, nf4_code_values()), ValueError, "NaN"),
    (lambda: QuantizedTensor.quantize(torch.randn(64), "nf5"), ValueError, "nf4, int4, fp4, int8"),
    (lambda: QLoRALinear(nn.Embedding(4, 64), 2, 4), TypeError, "nn.Linear"),
])
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call()


# --------------------------------------------------------------------------------- the layer --
def test_qlora_linear_equals_lora_on_the_dequantized_weight():
    torch.manual_seed(0)
    base = nn.Linear(128, 64)
    layer = QLoRALinear(base, 8, 16)
    nn.init.normal_(layer.lora_B)
    frozen = nn.Linear(128, 64)
    with torch.no_grad():
        frozen.weight.copy_(layer.dequantized_weight())
        frozen.bias.copy_(base.bias)
    ref = LoRALinear(frozen, 8, 16)
    with torch.no_grad():
        ref.lora_A.copy_(layer.lora_A)
        ref.lora_B.copy_(layer.lora_B)
    x1 = torch.randn(4, 10, 128, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    g = torch.randn(4, 10, 64)
    (layer(x1) * g).sum().backward()
    (ref(x2) * g).sum().backward()
    for got, want in ((x1.grad, x2.grad), (layer.lora_A.grad, ref.lora_A.grad), (layer.lora_B.grad, ref.lora_B.grad)):
        assert (got - want).abs().max() <= 1e-6
    assert sorted(n for n, p in layer.named_parameters() if p.requires_grad) == ["lora_A", "lora_B"]


def test_qlora_linear_computes_in_the_input_dtype_and_under_autocast():
    layer = QLoRALinear(nn.Linear(64, 64), 4, 8)
    x = torch.randn(2, 64)
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    with torch.autocast("cpu", torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


def test_the_dequantized_weight_is_not_kept_for_backward():
    """The autograd.Function saves nothing weight-sized; F.linear on the dequantized weight would."""
    layer = QuantizedLinear(nn.Linear(256, 128, bias=False))
    x = torch.randn(8, 256, requires_grad=True)
    with SavedTensorCounter(layer) as counter:
        out = layer(x)
    assert counter.activation_bytes == 0
    with SavedTensorCounter(layer) as naive:
        naive_out = nn.functional.linear(x, layer.dequantized_weight())
    assert naive.activation_bytes == 256 * 128 * 4  # the whole fp32 weight, until backward
    out.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    naive_out.sum().backward()
    assert torch.equal(grad, x.grad)


def tiny_batches(batch_size=8):
    return data.batch_sampler(data.encode(data.load_text("sonnets")), batch_size, 64, seed=0)


def test_apply_qlora_refuses_bad_targets_and_sizes():
    with pytest.raises(ValueError, match="not among them"):
        apply_qlora(load_pretrained(), 4, 8, ["lm_head"])
    with pytest.raises(ValueError, match="matched no module"):
        apply_qlora(load_pretrained(), 4, 8, ["nothing_here"])
    with pytest.raises(ValueError, match="multiple of block_size"):
        apply_qlora(load_pretrained(), 4, 8, block_size=3000)
    model = load_pretrained()
    with pytest.raises(ValueError, match="unknown code table"):
        apply_qlora(model, 4, 8, code="nf3")
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())  # untouched


def test_merge_into_a_requantized_base_adds_a_quantization_error_and_fp32_merge_does_not():
    torch.manual_seed(0)
    x = torch.randint(0, 96, (2, 32))
    model = apply_qlora(load_pretrained(), 8, 16, ["q_proj", "v_proj"])
    for layer in qlora_layers(model).values():
        nn.init.normal_(layer.lora_B, std=0.02)
    with torch.no_grad():
        before = model(x)
        exact = merge_qlora(copy.deepcopy(model), requantize=False)(x)
        requantized = merge_qlora(model)(x)
    assert not qlora_layers(model)
    assert (exact - before).abs().max() < 1e-4
    assert (requantized - before).abs().max() > 10 * (exact - before).abs().max()
    with pytest.raises(ValueError, match="no QLoRA layers"):
        merge_qlora(model)


# ------------------------------------------------------------------------ the 8-bit optimizer --
def test_adamw8bit_with_fp32_state_is_torch_adamw():
    get_batch = tiny_batches(4)
    runs = {}
    for name, make in {"torch": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=False),
                       "ours": lambda p: AdamW8bit(p, lr=1e-3, min_8bit_size=10**12)}.items():
        torch.manual_seed(0)
        model = load_pretrained()
        train(model, get_batch, steps=3, optimizer=make(model.parameters()), progress=False)
        runs[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (runs["torch"] - runs["ours"]).abs().max() <= 1e-6


def test_adamw8bit_state_bytes_and_training_close_to_fp32():
    get_batch = data.batch_sampler(data.encode(data.load_text("sonnets")), 4, 32, seed=0)
    model = load_pretrained()
    big = [p for n, p in model.named_parameters() if not n.startswith(("embed_tokens", "lm_head"))]
    small = [p for n, p in model.named_parameters() if n.startswith(("embed_tokens", "lm_head"))]
    optimizer = AdamW8bit([{"params": big}, {"params": small, "optim_bits": 32}], lr=1e-3)
    log = train(model, get_batch, steps=5, optimizer=optimizer, progress=False)
    expected = sum(quant_math.optimizer_state_bytes(p.numel(), 2, "8bit", 4) for p in big)
    expected += sum(8 * p.numel() for p in small) + 4 * len(big + small)
    assert optimizer_state_bytes(optimizer) == expected
    torch.manual_seed(0)
    reference = load_pretrained()
    ref_log = train(reference, get_batch, steps=5, optimizer=torch.optim.AdamW(reference.parameters(), lr=1e-3),
                    progress=False)
    assert max(abs(a - b) for a, b in zip(log.losses, ref_log.losses)) < 1e-2


def test_adamw8bit_refuses_bad_settings():
    params = [nn.Parameter(torch.zeros(4))]
    for kwargs in ({"lr": 0}, {"betas": (1.0, 0.9)}, {"weight_decay": -1}, {"block_size": 0}):
        with pytest.raises(ValueError):
            AdamW8bit(params, **kwargs)
    with pytest.raises(ValueError, match="optim_bits"):
        AdamW8bit([{"params": params, "optim_bits": 4}])


def test_optimizer_state_formats_in_quant_math():
    assert quant_math.optimizer_state_bytes(4096, 2, "8bit", 4) == 2 * (4096 + 2 * 4)
    assert quant_math.optimizer_state_bytes(100, 2, "8bit", 2) == 800  # small tensors stay fp32
    assert quant_math.optimizer_state_bytes(100, 2, "same", 2) == 400
    with pytest.raises(ValueError, match="optimizer state format"):
        quant_math.optimizer_state_bytes(100, 2, "4bit", 4)
    assert math.isclose(quant_math.BASE_FORMATS["nf4_dq"].bits_per_parameter, 4.127, abs_tol=1e-3)


def test_importing_peft_with_torchao_installed_writes_nothing_to_stderr():
    """peft and transformers import torchao when it is installed; its import-time log lines must not reach a
    notebook's stderr (efftrain_lib/__init__.py quiets exactly those loggers)."""
    import subprocess
    import sys

    code = "import efftrain_lib, peft; from efftrain_lib.nf4_reference import torchao_nf4_module; torchao_nf4_module()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-500:]

"""Graders for Chapter 6 (QLoRA): exercises 6.1-6.4 in <impl>/qlora.py.

Behaviour only, through the exercise API:
  quantize_blockwise_absmax(x, block_size, code) -> (indices uint8, absmax float32)
  dequantize_blockwise_absmax(indices, absmax, code, block_size, shape) -> float32 tensor
  nf4_code_values() -> 16 float32 values
  double_quantize(absmax, block_size=256) -> (codes int8, factors, mean); double_dequantize(codes, factors, mean, block_size)
  QLoRALinear(base, rank, alpha, block_size=64, double_quant=True) with lora_A, lora_B

The references: torchao's NF4 (`to_nf4`, torchao 0.18: its code indices, block absmax, double-quantized
scales and dequantized weight; given torchao's own code table, the arithmetic is the same, so equality is
exact), bitsandbytes' published NF4 table, a brute-force nearest-value search, and for the layer the
library's NF4 (efftrain_lib.quantization, proven equal to torchao by tests/test_qlora.py) under the
library's LoRA layer (efftrain_lib.lora.LoRALinear, proven equal to PEFT).

Tolerances (float32): codes, absmax, double-quantized scales: exact; dequantized weight vs torchao
<= 1e-7; NF4 table <= 1e-6 (the issue's bar; torchao's 4-decimal table is 5e-5 off); layer outputs
<= 1e-5; gradients <= 1e-5 + 1e-4 |ref|; bf16 outputs within 2e-2 relative of fp32.
"""

from __future__ import annotations

import gc
import math
import weakref

import torch
import torch.nn as nn

from efftrain_lib.grading import Checks, failed, passed
from efftrain_lib.lora import LoRALinear
from efftrain_lib.nf4_reference import torchao_nf4, torchao_nf4_module
from efftrain_lib.quantization import NF4_PUBLISHED, QuantizedTensor
from efftrain_lib.quantization import double_dequantize as ref_double_dequantize
from efftrain_lib.quantization import double_quantize as ref_double_quantize

EXERCISES = {
    "6.1": "block-wise absmax quantization and its inverse",
    "6.2": "NormalFloat4 from its definition",
    "6.3": "double quantization (torchao's scheme)",
    "6.4": "QLoRALinear: a 4-bit base under LoRA",
}
CHECKS = Checks()

ATOL, GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-5, 1e-4
IN, OUT, RANK, ALPHA = 128, 64, 4, 8.0  # 8192 weights = 128 blocks of 64: one partial group of scales


def prepare() -> None:
    """Import torchao once (several seconds), before the per-check timer starts."""
    torchao_nf4_module()


# ---------------------------------------------------------------------------------- fixtures --
def _weight(rows=128, cols=256, seed=0, outliers=True) -> torch.Tensor:
    """A normal weight (std 0.02, as LLM weights) with a few outliers: 512 blocks of 64, 2 groups of 256."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    if outliers:
        w.view(-1)[torch.randint(0, w.numel(), (8,), generator=g)] *= 30
    return w


def _reference():
    return torchao_nf4(_weight(), 64, 256)


def _diff(a, b) -> float:
    return (torch.as_tensor(a).detach().float() - torch.as_tensor(b).detach().float()).abs().max().item()


def _brute_force_indices(x, block_size, code):
    blocks = x.float().reshape(-1, block_size)
    absmax = blocks.abs().amax(1)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    return (scaled.reshape(-1, 1) - code.reshape(1, -1)).abs().argmin(1)


def _index_rounding_hint(impl_indices, x, block_size, code) -> str:
    """Name the mistake when the indices are not the nearest values' (by index, or one global absmax)."""
    n = code.numel()
    blocks = x.float().reshape(-1, block_size)
    absmax = blocks.abs().amax(1, keepdim=True)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    by_index = ((scaled + 1) / 2 * (n - 1)).round().reshape(-1)
    if torch.equal(impl_indices.long(), by_index.long()):
        return ("nearest code by index, not by value: (x + 1) / 2 * 15 assumes evenly spaced codes; find the "
                "code VALUE nearest to each scaled value (argmin of |x - code|)")
    whole = _brute_force_indices(x.reshape(-1), x.numel(), code)
    if torch.equal(impl_indices.long(), whole):
        return "absmax over the whole tensor: compute one absmax per block of block_size values"
    return "map every value, divided by its block's absmax, to the index of the nearest code value"


# --------------------------------------------------------- Exercise 6.1: block-wise absmax --
@CHECKS.add("6.1", "absmax: one float32 scale per block",
            hint="absmax = the largest |value| of each block of block_size values, float32, one per block")
def absmax_one_float32_scale_per_block(impl):
    ref = _reference()
    w = _weight()
    indices, absmax = impl.quantize_blockwise_absmax(w, 64, ref.table)
    if not isinstance(absmax, torch.Tensor) or absmax.numel() != w.numel() // 64:
        n = absmax.numel() if isinstance(absmax, torch.Tensor) else absmax
        return failed(f"absmax has {n} values for {w.numel()} weights in blocks of 64; expected {w.numel() // 64}",
                      "absmax over the whole tensor? compute one absmax per block of block_size values")
    if absmax.dtype != torch.float32:
        return failed(f"absmax is {absmax.dtype}", "return the scales as float32")
    if not torch.equal(absmax.reshape(-1), ref.absmax):
        return failed(f"absmax max |diff| {_diff(absmax.reshape(-1), ref.absmax):.2e} vs torchao's get_block_absmax",
                      "absmax of a block is max |x| over its block_size consecutive values of the flattened tensor")
    if not (isinstance(indices, torch.Tensor) and indices.dtype == torch.uint8 and indices.numel() == w.numel()):
        return failed(f"indices: {getattr(indices, 'dtype', type(indices))} of {getattr(indices, 'shape', '?')}",
                      "return the indices as a flat uint8 tensor, one per value")
    return passed(f"{absmax.numel()} scales equal torchao's exactly")


@CHECKS.add("6.1", "codes equal torchao's (its NF4 table)",
            hint="divide each block by its absmax and take the index of the nearest code value")
def codes_equal_torchaos_its_nf4_table(impl):
    ref = _reference()
    w = _weight()
    indices, _ = impl.quantize_blockwise_absmax(w, 64, ref.table)
    got = indices.reshape(-1).long()
    wrong = int((got != ref.indices.long()).sum())
    if wrong:
        return failed(f"{wrong} of {w.numel()} codes differ from torchao's to_nf4 (given its table)",
                      _index_rounding_hint(got, w, 64, ref.table))
    return passed(f"all {w.numel()} codes equal torchao's (128 x 256 weight with outliers, blocks of 64)")


@CHECKS.add("6.1", "dequantized weight equals torchao's",
            hint="dequantize: code[index] times the absmax of the index's own block, reshaped")
def dequantized_weight_equals_torchaos(impl):
    ref = _reference()
    t = ref.tensor
    scales = t.dequantize_scalers(t.quantized_scalers, t.quantization_factor, t.scaler_block_size)
    got = impl.dequantize_blockwise_absmax(ref.indices, scales, ref.table, 64, ref.dequantized.shape)
    if tuple(got.shape) != tuple(ref.dequantized.shape):
        return failed(f"shape {tuple(got.shape)}, expected {tuple(ref.dequantized.shape)}", "reshape to `shape`")
    diff = _diff(got, ref.dequantized)
    if diff > 1e-7:
        tiled = ref.table[ref.indices.long()] * scales.repeat(64)  # scale i % n_blocks: repeat, not interleave
        hint = ("each block must use its own absmax: repeat_interleave (or a [blocks, 1] column), not repeat"
                if _diff(got.reshape(-1), tiled) < 1e-7 else "dequantized value = code[index] * its block's absmax")
        return failed(f"max |diff| {diff:.2e} vs torchao's get_original_weight", hint)
    return passed(f"max |diff| {diff:.1e} vs torchao's get_original_weight (the same arithmetic)")


@CHECKS.add("6.1", "any sorted 2^b code table round-trips",
            hint="work for any sorted table of 2^b values (b <= 8), zero blocks and bf16 input, not only NF4")
def any_sorted_pow2_b_code_table_round_trips(impl):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 64, generator=g)
    x[0, :32] = 0.0  # an all-zero block of 32
    tables = {"an uneven 2-bit table": torch.tensor([-1.0, -0.25, 0.5, 1.0]),
              "uniform int8": torch.arange(-128, 128, dtype=torch.float32) / 127}
    for name, code in tables.items():
        indices, absmax = impl.quantize_blockwise_absmax(x, 32, code)
        want = _brute_force_indices(x, 32, code)
        if not torch.equal(indices.reshape(-1).long(), want):
            return failed(f"{name}: {int((indices.reshape(-1).long() != want).sum())} indices are not the nearest "
                          "code value's", _index_rounding_hint(indices.reshape(-1), x, 32, code))
        back = impl.dequantize_blockwise_absmax(indices, absmax, code, 32, x.shape)
        scales = x.reshape(-1, 32).abs().amax(1)
        want_back = (code[want].view(-1, 32) * scales[:, None]).view(x.shape)
        if not torch.isfinite(back).all() or _diff(back, want_back) > 1e-6:
            tiled = (code[want] * scales.repeat(32)).view(x.shape)
            hint = ("an all-zero block has absmax 0: divide it by 1, not 0 (0/0 is NaN)" if not torch.isfinite(back).all()
                    else "each block must use its own absmax: repeat_interleave (or a [blocks, 1] column), not repeat"
                    if _diff(back, tiled) < 1e-6 else "dequantized value = code[index] * its block's absmax")
            return failed(f"{name}: dequantized max |diff| {_diff(back, want_back):.2e} (a zero block included)", hint)
    _, absmax = impl.quantize_blockwise_absmax(x.bfloat16(), 32, tables["uniform int8"])
    if absmax.dtype != torch.float32:
        return failed(f"bf16 input gives absmax in {absmax.dtype}", "return absmax as float32 whatever the input")
    return passed("an uneven 2-bit table, uniform int8, a zero block and bf16 input")


@CHECKS.add("6.1", "bad input gets clear errors",
            hint="raise ValueError (size not a multiple of block_size, block_size <= 0, code not sorted or not "
                 "2^b values) and TypeError (a non-floating tensor), each with a message")
def bad_input_gets_clear_errors(impl):
    nf4 = torch.tensor(NF4_PUBLISHED)
    x = torch.randn(4, 64)
    cases = [("100 values in blocks of 64", ValueError, lambda: impl.quantize_blockwise_absmax(torch.randn(100), 64, nf4),
              "refuse a size that is not a multiple of block_size (do not pad or drop values silently)"),
             ("an integer tensor", TypeError, lambda: impl.quantize_blockwise_absmax(torch.ones(64, dtype=torch.int32), 64, nf4),
              "refuse a non-floating tensor with TypeError"),
             ("block_size 0", ValueError, lambda: impl.quantize_blockwise_absmax(x, 0, nf4), "refuse block_size <= 0"),
             ("block_size -64", ValueError, lambda: impl.quantize_blockwise_absmax(x, -64, nf4), "refuse block_size <= 0"),
             ("an unsorted code table", ValueError, lambda: impl.quantize_blockwise_absmax(x, 64, nf4.flip(0)),
              "refuse a code table that is not sorted ascending"),
             ("a 15-value code table", ValueError, lambda: impl.quantize_blockwise_absmax(x, 64, nf4[1:]),
              "refuse a code table that is not 2^b values")]
    for name, error, call, hint in cases:
        try:
            call()
        except error as exc:
            if not str(exc).strip():
                return failed(f"{name}: {error.__name__} without a message", "say what was wrong and what is allowed")
            continue
        except NotImplementedError:
            raise  # a stub is reported as a stub
        except Exception as exc:  # noqa: BLE001 - reported
            return failed(f"{name}: raised {type(exc).__name__} ({exc}), expected {error.__name__}", hint)
        return failed(f"{name}: no error, expected {error.__name__}", hint)
    return passed(f"{len(cases)} bad inputs refused with the right error")


# ------------------------------------------------------------------------ Exercise 6.2: NF4 --
@CHECKS.add("6.2", "NF4 equals the published table",
            hint="quantiles of N(0, 1): 8 positive, 7 negative and an exact 0, normalised so the ends are -1 and 1")
def nf4_equals_the_published_table(impl):
    got = impl.nf4_code_values()
    published = torch.tensor(NF4_PUBLISHED)
    if not isinstance(got, torch.Tensor) or got.numel() != 16:
        return failed(f"got {type(got).__name__} of {getattr(got, 'numel', lambda: '?')()} values", "return 16 values")
    if got.dtype != torch.float32:
        return failed(f"dtype {got.dtype}", "return a float32 tensor")
    got = got.reshape(-1)
    diff = _diff(got, published)
    if diff > 1e-6:
        if not (got == 0).any():
            hint = "no exact zero: NF4 is asymmetric (7 negative, 0, 8 positive quantiles), so 0 is representable"
        elif (got[1:] < got[:-1]).any():
            hint = "sort the values ascending"
        elif abs(got.max().item() - 1) > 1e-6 or abs(got.min().item() + 1) > 1e-6:
            hint = "normalise by the largest quantile so the table spans [-1, 1]"
        elif diff < 1e-4:
            hint = "rounded values (torchao's table has 4 decimals): build the table from the normal quantiles"
        else:
            hint = "positive quantiles at probabilities linspace(0.9677083, 0.5, 9)[:-1], negative at linspace(.., 8)[:-1]"
        return failed(f"max |diff| {diff:.2e} vs bitsandbytes' NF4 table (tolerance 1e-6)", hint)
    return passed(f"max |diff| {diff:.1e} vs bitsandbytes' NF4 table (tolerance 1e-6)")


# ------------------------------------------------------------ Exercise 6.3: double quantization --
def _double_quant_hint(impl, scales: torch.Tensor) -> str:
    """Name what differs between the learner's double quantization of `scales` and the library's."""
    codes, factors, mean = impl.double_quantize(scales, 256)
    lib = ref_double_quantize(scales, 256)
    plain = 256 / (2 * torch.nn.functional.pad(scales, (0, -scales.numel() % 256)).view(-1, 256).abs().amax(1))
    if float(mean) == 0.0 or torch.allclose(factors.float().reshape(-1), plain):
        return ("the scales' mean was not removed before quantizing: subtract it first (the scales are all positive, "
                "so centring them doubles the int8 range)")
    if ((codes.reshape(-1) == -128) & (lib.codes == 127)).any():
        return "+absmax maps to 128, which wraps to -128 in int8: clamp to [-128, 127] before casting"
    if factors.numel() != lib.factors.numel():
        return "the last group may hold fewer than 256 scales: give it its own factor"
    return "codes = round((scale - mean) * factor), factor = 256 / (2 * the group's absmax), clamped to [-128, 127]"


@CHECKS.add("6.3", "double quantization equals torchao's",
            hint="subtract the scales' mean; per group of 256: factor 256 / (2 absmax), round, clamp to [-128, 127], int8")
def double_quantization_equals_torchaos(impl):
    ref = _reference()
    codes, factors, mean = impl.double_quantize(ref.absmax, 256)
    if codes.dtype != torch.int8 or codes.numel() != ref.absmax.numel():
        return failed(f"codes: {codes.dtype} x {codes.numel()}, expected int8 x {ref.absmax.numel()}",
                      "one int8 code per scale")
    same = (float(mean) == float(ref.scale_mean) and torch.equal(factors.float().reshape(-1), ref.scale_factors)
            and torch.equal(codes.reshape(-1), ref.scale_codes))
    if not same:
        wrong = int((codes.reshape(-1) != ref.scale_codes).sum())
        return failed(f"{wrong} of {codes.numel()} scale codes differ from torchao's; mean {float(mean):.6g} vs "
                      f"{float(ref.scale_mean):.6g}, first factor {float(factors.reshape(-1)[0]):.6g} vs "
                      f"{float(ref.scale_factors[0]):.6g}", _double_quant_hint(impl, ref.absmax))
    return passed(f"codes, {factors.numel()} factors and the mean equal torchao's exactly (512 scales)")


@CHECKS.add("6.3", "double dequantization recovers the scales",
            hint="scale = code / its group's factor + mean; a last partial group has its own factor")
def double_dequantization_recovers_the_scales(impl):
    ref = _reference()
    t = ref.tensor
    want = t.dequantize_scalers(t.quantized_scalers, t.quantization_factor, t.scaler_block_size)
    got = impl.double_dequantize(ref.scale_codes, ref.scale_factors, ref.scale_mean, 256)
    if _diff(got.reshape(-1), want) > 0:
        return failed(f"max |diff| {_diff(got.reshape(-1), want):.2e} vs torchao's dequantize_scalers",
                      "scale = code / factor of its group (repeat_interleave, not repeat) + mean")
    scales = ref.absmax[:300]  # one full group and a partial one
    lib = ref_double_dequantize(*ref_double_quantize(scales, 256), 256)
    mine = impl.double_dequantize(*impl.double_quantize(scales, 256), 256)
    if mine.numel() != 300 or _diff(mine.reshape(-1), lib) > 1e-6:
        return failed(f"300 scales (a partial last group): max |diff| {_diff(mine.reshape(-1)[:300], lib[: mine.numel()]):.2e} "
                      "vs the library", _double_quant_hint(impl, scales))
    error = (mine.reshape(-1) - scales).abs().max().item()
    return passed(f"equal to torchao's; 300 scales recovered within {error:.1e} (partial group included)")


# ------------------------------------------------------------------ Exercise 6.4: QLoRALinear --
def _base(bias=True) -> nn.Linear:
    torch.manual_seed(3)
    base = nn.Linear(IN, OUT, bias=bias)
    with torch.no_grad():
        base.weight.normal_(0, 0.02)
        base.weight.view(-1)[:4] *= 20  # outliers
    return base


def _dequantized(base: nn.Linear, double_quant=True) -> torch.Tensor:
    q = QuantizedTensor.quantize(base.weight, "nf4", block_size=64, double_quant_block=256 if double_quant else None)
    return q.dequantize()


def _layer(impl, base=None, double_quant=True):
    return impl.QLoRALinear(base if base is not None else _base(), RANK, ALPHA, 64, double_quant)


def _reference_lora(base: nn.Linear, layer, double_quant=True) -> LoRALinear:
    frozen = nn.Linear(IN, OUT, bias=base.bias is not None)
    with torch.no_grad():
        frozen.weight.copy_(_dequantized(base, double_quant))
        if base.bias is not None:
            frozen.bias.copy_(base.bias)
    ref = LoRALinear(frozen, RANK, ALPHA)
    with torch.no_grad():
        ref.lora_A.copy_(layer.lora_A)
        ref.lora_B.copy_(layer.lora_B)
    return ref


def _x(requires_grad=False):
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 5, IN, generator=g).requires_grad_(requires_grad)


def _effective_weight(layer, bias) -> torch.Tensor:
    """The weight the layer really uses: its output for the identity, with B = 0 and the bias taken off."""
    with torch.no_grad():
        saved = layer.lora_B.detach().clone()
        layer.lora_B.zero_()
        out = layer(torch.eye(IN)) - (bias if bias is not None else 0)
        layer.lora_B.copy_(saved)
    return out.t()


def _weight_hint(impl, base: nn.Linear, layer, double_quant=True) -> str:
    """Name why the layer's weight is not the reference NF4 weight."""
    weight = _effective_weight(layer, base.bias)
    if _diff(weight, base.weight) < ATOL:
        return "the output is the fp32 base's: compute with the dequantized NF4 weight"
    if double_quant and _diff(weight, _dequantized(base, False)) < ATOL:
        return "double_quant ignored: with double_quant=True the scales must be double-quantized (8-bit)"
    try:  # the learner's own pipeline (Exercises 6.1-6.3)
        code = impl.nf4_code_values()
        indices, absmax = impl.quantize_blockwise_absmax(base.weight, 64, code)
        if double_quant:
            absmax = impl.double_dequantize(*impl.double_quantize(absmax, 256), 256)
        own = impl.dequantize_blockwise_absmax(indices, absmax, code, 64, base.weight.shape)
        if _diff(weight, own) < ATOL:
            return ("the layer follows your own quantize/dequantize/double-quantize/NF4, which differ from the "
                    "reference: fix Exercises 6.1-6.3 first (their checks name the mistake)")
    except Exception:  # noqa: BLE001 - only a diagnosis
        pass
    return "the dequantized weight must be NF4 (blocks of 64) with double-quantized scales (groups of 256)"


def _randomize_b(layer):
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def _trained_pair(impl):
    """(base, the learner's layer with a non-zero B, the reference LoRA on the dequantized weight)."""
    base = _base()
    layer = _layer(impl, base)
    _randomize_b(layer)
    return base, layer, _reference_lora(base, layer)


def _weight_or(impl, base, layer, otherwise: str) -> str:
    """The weight's diagnosis if the layer's weight is off, else `otherwise` (the adapter is to blame)."""
    if _diff(_effective_weight(layer, base.bias), _dequantized(base)) > ATOL:
        return _weight_hint(impl, base, layer)
    return otherwise


@CHECKS.add("6.4", "only lora_A and lora_B train",
            hint="freeze everything but lora_A [rank, in] and lora_B [out, rank] (keep the bias frozen)")
def only_lora_a_and_lora_b_train(impl):
    layer = _layer(impl)
    trainable = sorted(name for name, p in layer.named_parameters() if p.requires_grad)
    if trainable != ["lora_A", "lora_B"]:
        return failed(f"trainable parameters: {trainable}", "base left trainable: only lora_A and lora_B may require "
                      "grad; the quantized base and its bias are frozen")
    shapes = (tuple(layer.lora_A.shape), tuple(layer.lora_B.shape))
    if shapes != ((RANK, IN), (OUT, RANK)):
        return failed(f"lora_A {shapes[0]}, lora_B {shapes[1]}", f"lora_A is [rank, in] = {(RANK, IN)}, lora_B [out, rank]")
    return passed("trainable: lora_A [4, 128], lora_B [64, 4]")


@CHECKS.add("6.4", "starts as the quantized base (B = 0)",
            hint="lora_B starts at zero, so the layer computes x W^T + b with W the dequantized NF4 weight")
def starts_as_the_quantized_base_b_0(impl):
    base = _base()
    want = nn.functional.linear(_x(), _dequantized(base), base.bias)
    layer = _layer(impl, base)
    if layer.lora_B.abs().max() != 0:
        return failed("lora_B is not zero at init", "B initialised non-zero: the layer must start as the base (B = 0)")
    with torch.no_grad():
        got = layer(_x())
    diff = _diff(got, want)
    if diff > ATOL:
        return failed(f"max |diff| {diff:.2e} vs x dequant(W)^T + b", _weight_hint(impl, base, layer))
    return passed(f"max |diff| {diff:.1e} vs x dequant(W)^T + b (NF4, double quantization)")


@CHECKS.add("6.4", "forward equals LoRA on the dequantized weight",
            hint="forward = dequantized base + (x A^T B^T) * alpha / rank")
def forward_equals_lora_on_the_dequantized_weight(impl):
    base, layer, ref = _trained_pair(impl)
    with torch.no_grad():
        diff = _diff(layer(_x()), ref(_x()))
    if diff > ATOL:
        return failed(f"max |diff| {diff:.2e} vs efftrain_lib.lora.LoRALinear on the dequantized weight",
                      _weight_or(impl, base, layer, "the LoRA branch: (x A^T B^T) * alpha / rank, added to the base's output"))
    return passed(f"max |diff| {diff:.1e} vs LoRA on the dequantized weight")


@CHECKS.add("6.4", "gradients equal LoRA's on the dequantized weight",
            hint="backward must give dx = g dequant(W) and LoRA's gradients for A and B")
def gradients_equal_loras_on_the_dequantized_weight(impl):
    base, layer, ref = _trained_pair(impl)
    g = torch.randn(3, 5, OUT, generator=torch.Generator().manual_seed(7))
    x1, x2 = _x(True), _x(True)
    (layer(x1) * g).sum().backward()
    (ref(x2) * g).sum().backward()
    for name, got, want in (("dx", x1.grad, x2.grad), ("lora_A.grad", layer.lora_A.grad, ref.lora_A.grad),
                            ("lora_B.grad", layer.lora_B.grad, ref.lora_B.grad)):
        if got is None:
            return failed(f"{name} is None", "the input and both adapters need gradients (return dx from backward)")
        if (got - want).abs().max() > GRAD_ATOL + GRAD_RTOL * want.abs().max():
            return failed(f"{name}: max |diff| {_diff(got, want):.2e} vs LoRA on the dequantized weight",
                          _weight_or(impl, base, layer, "backward: dx = grad_output @ dequant(W) (the same W as in forward)"))
    return passed("dx, lora_A.grad, lora_B.grad equal LoRA's within 1e-5 + 1e-4 |ref|")


def _stored_bytes(layer) -> int:
    tensors = list(layer.buffers()) + [p for p in layer.parameters() if not p.requires_grad]
    return sum(t.numel() * t.element_size() for t in tensors)


@CHECKS.add("6.4", "double_quant=False keeps fp32 scales",
            hint="without double quantization keep one fp32 absmax per block; with it, 8-bit scales (fewer bytes)")
def double_quant_false_keeps_fp32_scales(impl):
    base = _base()
    single = _layer(impl, base, double_quant=False)
    with torch.no_grad():
        single.lora_B.zero_()  # the scales are checked here, not the adapter's init
        diff = _diff(single(_x()), nn.functional.linear(_x(), _dequantized(base, False), base.bias))
    if diff > ATOL:
        return failed(f"double_quant=False: max |diff| {diff:.2e} vs NF4 with fp32 scales",
                      _weight_hint(impl, base, single, double_quant=False))
    double = _layer(impl, base, double_quant=True)
    if _stored_bytes(double) >= _stored_bytes(single):
        return failed(f"{_stored_bytes(double)} bytes stored with double quantization, {_stored_bytes(single)} without",
                      "double quantization must store the scales in 8 bits (fewer bytes than fp32 scales)")
    return passed(f"fp32 scales: max |diff| {diff:.1e}; stored bytes {_stored_bytes(single)} -> {_stored_bytes(double)}")


def _floating_tensors(layer):
    for module in layer.modules():
        for value in list(vars(module).values()) + list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                yield value


@CHECKS.add("6.4", "codes packed two per byte, fp32 weight not kept",
            hint="store the 4-bit codes two per byte (uint8, out*in/2) and drop the fp32 weight")
def codes_packed_two_per_byte_fp32_weight_not_kept(impl):
    base = _base()
    watch = weakref.ref(base.weight)
    layer = _layer(impl, base)
    del base
    gc.collect()
    if watch() is not None:
        return failed("the base's fp32 weight is still alive after QLoRALinear(...) (the layer keeps a reference)",
                      "do not keep the base nn.Linear or its weight: store codes and scales, copy only the bias")
    big = [tuple(t.shape) for t in _floating_tensors(layer) if t.numel() >= IN * OUT]
    if big:
        return failed(f"floating tensors of {big} are kept: the dequantized weight cached?",
                      "dequantized weight cached so no memory is saved: dequantize in forward, do not store it")
    packed = [t for t in layer.buffers() if t.dtype == torch.uint8 and t.numel() == IN * OUT // 2]
    if not packed:
        sizes = [(t.dtype, t.numel()) for t in layer.buffers()]
        return failed(f"no uint8 buffer of {IN * OUT // 2} bytes (buffers: {sizes})",
                      "pack two 4-bit codes per byte (high nibble, low nibble) and register it as a buffer")
    bits = 8 * (_stored_bytes(layer) - OUT * 4) / (IN * OUT)  # the bias aside
    return passed(f"{bits:.3f} bits per weight stored; the fp32 weight is gone")


@CHECKS.add("6.4", "dequantized weight not saved for backward",
            hint="use a torch.autograd.Function that dequantizes in forward and again in backward")
def dequantized_weight_not_saved_for_backward(impl):
    layer = _layer(impl)
    saved = []

    def pack(tensor):
        saved.append((tuple(tensor.shape), tensor.dtype))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(_x(True))
    weight_sized = [s for s in saved if math.prod(s[0]) == IN * OUT and s[1].is_floating_point]
    if weight_sized:
        return failed(f"autograd saved a {weight_sized[0][0]} {weight_sized[0][1]} tensor for backward",
                      "dequantized weight cached for backward, so no memory is saved: dequantize again in backward "
                      "(torch.autograd.Function)")
    out.sum().backward()
    return passed(f"{len(saved)} tensors saved, none of them weight-sized")


@CHECKS.add("6.4", "computes in the input's dtype",
            hint="dequantize the weight in x.dtype and return the output in x.dtype (bf16 in, bf16 out)")
def computes_in_the_inputs_dtype(impl):
    layer = _layer(impl)
    _randomize_b(layer)
    with torch.no_grad():
        want = layer(_x())
        got = layer(_x().bfloat16())
    if got.dtype != torch.bfloat16:
        return failed(f"bf16 input gave a {got.dtype} output", "compute in the input's dtype: dequantize to x.dtype")
    error = _diff(got, want) / want.abs().max().item()
    if error > 2e-2:
        return failed(f"bf16 output off by {error:.1e} relative to fp32", "dequantize the same weight, then cast")
    return passed(f"bf16 in, bf16 out, within {error:.1e} of fp32")

"""Floating-point formats (fp32, fp16, bf16) read from torch.finfo and from the bits themselves.

Everything here is computed, not typed in: the ranges come from `torch.finfo`, the bit fields from the
tensor's own bytes (`Tensor.view(int dtype)`), and rounding from casting a tensor. Used by the mixed
precision chapter (notebooks/03_mixed_precision.ipynb) and its sliders (efftrain_lib/precision_explorer.py).

    >>> bit_fields(1.0, torch.float16)
    BitFields(dtype='float16', sign='0', exponent='01111', mantissa='0000000000', ...)
    >>> round_through(0.1, torch.bfloat16)
    0.10009765625
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: The three formats of the chapter: (exponent bits, mantissa bits) and the integer type of the same width.
LAYOUTS = {
    torch.float32: (8, 23, torch.int32),
    torch.float16: (5, 10, torch.int16),
    torch.bfloat16: (8, 7, torch.int16),
}
NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_BY_NAME = {**{name: dtype for dtype, name in NAMES.items()},
            "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
            "half": torch.float16, "float": torch.float32}


def as_dtype(dtype) -> torch.dtype:
    """torch.float16, "fp16", "float16" or "half" -> torch.float16 (likewise fp32, bf16)."""
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _BY_NAME:
            raise ValueError(f"unknown format {dtype!r}; choose from fp32, fp16, bf16")
        return _BY_NAME[key]
    if dtype not in LAYOUTS:
        raise ValueError(f"unsupported dtype {dtype}; this module covers {[NAMES[d] for d in LAYOUTS]}")
    return dtype


@dataclass(frozen=True)
class FormatInfo:
    """One format's layout and range, read from torch.finfo (every value is a Python float)."""

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    max: float  # largest finite value
    min_normal: float  # smallest positive normal (finfo.tiny)
    min_subnormal: float  # smallest positive value (the bits 0...01)
    eps: float  # gap between 1.0 and the next value: 2 ** -mantissa_bits
    resolution: float  # about 10 ** -(decimal digits it keeps) (finfo.resolution)

    @property
    def log2_range(self) -> tuple[float, float]:
        """(log2 of the smallest subnormal, log2 of the largest finite value)."""
        return math.log2(self.min_subnormal), math.log2(self.max)


def format_info(dtype) -> FormatInfo:
    dtype = as_dtype(dtype)
    exponent_bits, mantissa_bits, int_dtype = LAYOUTS[dtype]
    fi = torch.finfo(dtype)
    # torch.finfo has no smallest subnormal: read it from the bits 0...01 (the smallest mantissa step).
    min_subnormal = float(torch.tensor(1, dtype=int_dtype).view(dtype).item())
    return FormatInfo(NAMES[dtype], fi.bits, exponent_bits, mantissa_bits, float(fi.max), float(fi.tiny),
                      min_subnormal, float(fi.eps), float(fi.resolution))


def format_table() -> list[FormatInfo]:
    """fp32, fp16, bf16, in that order."""
    return [format_info(dtype) for dtype in LAYOUTS]


@dataclass(frozen=True)
class BitFields:
    """A value's bits in one format, split into sign | exponent | mantissa, and what they mean."""

    dtype: str
    sign: str
    exponent: str
    mantissa: str
    stored: float  # the value the format actually holds (after rounding)
    kind: str  # "zero", "subnormal", "normal", "inf", "nan"

    def __str__(self) -> str:
        return f"{self.dtype:>4}: {self.sign} {self.exponent} {self.mantissa}  = {self.stored!r} ({self.kind})"

    def explain(self) -> str:
        """The value recomputed from the fields: (-1)^s x 2^(e - bias) x 1.m (or 0.m for subnormals)."""
        bias = 2 ** (len(self.exponent) - 1) - 1
        e, m = int(self.exponent, 2), int(self.mantissa, 2)
        sign = "-" if self.sign == "1" else "+"
        if self.kind in ("inf", "nan", "zero"):
            return f"{sign}{self.kind} (exponent bits all {'1' if self.kind != 'zero' else '0'})"
        lead, exp = (0, 1 - bias) if self.kind == "subnormal" else (1, e - bias)
        frac = m / 2 ** len(self.mantissa)
        return f"{sign}2^{exp} x {lead + frac:.10g} = {self.stored!r}"


def bit_fields(value: float, dtype) -> BitFields:
    """Round `value` to `dtype` and split the stored bits into sign, exponent and mantissa."""
    dtype = as_dtype(dtype)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"bit_fields needs a Python number, got {type(value).__name__}")
    exponent_bits, mantissa_bits, int_dtype = LAYOUTS[dtype]
    width = 1 + exponent_bits + mantissa_bits
    stored = torch.tensor(value, dtype=torch.float64).to(dtype)
    raw = int(stored.view(int_dtype).item()) & ((1 << width) - 1)  # two's complement -> unsigned
    text = format(raw, f"0{width}b")
    sign, exponent, mantissa = text[0], text[1:1 + exponent_bits], text[1 + exponent_bits:]
    if set(exponent) == {"1"}:
        kind = "nan" if "1" in mantissa else "inf"
    elif set(exponent) == {"0"}:
        kind = "subnormal" if "1" in mantissa else "zero"
    else:
        kind = "normal"
    return BitFields(NAMES[dtype], sign, exponent, mantissa, float(stored.item()), kind)


def round_through(value: float, dtype) -> float:
    """The value `dtype` stores for `value` (round to nearest even; inf beyond the range)."""
    return bit_fields(value, dtype).stored


def relative_error(value: float, dtype) -> float:
    """|stored - value| / |value| (0 for value 0; inf when the format overflows or flushes to zero)."""
    stored = round_through(value, dtype)
    if value == 0:
        return 0.0
    if math.isinf(stored) or stored == 0.0:
        return math.inf
    return abs(stored - value) / abs(value)


def representable_fractions(values: torch.Tensor, dtype=torch.float16, scale: float = 1.0) -> dict[str, float]:
    """What happens to `values * scale` when cast to `dtype`: shares that underflow to zero, that land in
    the subnormal range (precision lost), that overflow to inf, and that survive as normal numbers.

    Exact zeros in `values` are left out (they are zero in every format). The product is formed in fp64,
    so only the cast to `dtype` rounds.
    """
    info = format_info(dtype)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    values = values.detach().double().flatten()
    values = values[values != 0]
    if values.numel() == 0:
        raise ValueError("representable_fractions needs at least one non-zero value")
    scaled = values * scale
    cast = scaled.to(as_dtype(dtype)).double()
    n = values.numel()
    underflow = (cast == 0).sum().item() / n
    overflow = torch.isinf(cast).sum().item() / n
    subnormal = ((cast != 0) & (cast.abs() < info.min_normal)).sum().item() / n
    return {"underflow": underflow, "subnormal": subnormal, "overflow": overflow,
            "normal": 1.0 - underflow - overflow - subnormal}


def stochastic_round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """float32 -> bf16, rounded at random without bias: each value becomes one of the two bf16 values that
    bracket it, the one farther from zero with probability (distance from the nearer-to-zero one) / (their
    gap), so the expected result is the value itself. Round-to-nearest swallows an update smaller than half
    a bf16 step for good ("swamping", section 4 of the chapter); stochastic rounding keeps it on average,
    which is what lets weights live in bf16 without an fp32 master copy (Zamirai et al. 2020; torchao's
    bf16 AdamW).

    bf16 is the top 16 bits of fp32, so the two candidates are x's encoding with its low 16 bits cut off
    (toward zero) and that plus one bf16 step (away from zero); a uniform random 16-bit integer below the
    low bits picks "away" with exactly the right probability. Encodings are ordered like magnitudes, so the
    rule holds for subnormals, for negative values, and above bf16's largest finite value (the step away is
    inf), as torchao's `_fp32_to_bf16_sr`. Exact bf16 values, +-0 and +-inf come back unchanged, NaN as NaN.
    Draws from torch's default generator: torch.manual_seed reproduces a result. Any shape and strides.
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_to_bf16 takes a float32 tensor (the fp32 result of an update), got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}; cast it with .float() "
                        "first (a bf16 tensor is already rounded)")
    bits = x.view(torch.int32)
    toward_zero = bits & -(1 << 16)  # the upper 16 bits: x truncated to bf16
    noise = torch.randint(0, 1 << 16, x.shape, device=x.device, dtype=torch.int32)
    away = noise < (bits & 0xFFFF)  # True with probability (low 16 bits) / 2^16
    rounded = torch.where(away, toward_zero + (1 << 16), toward_zero).view(torch.float32).to(torch.bfloat16)
    return torch.where(torch.isnan(x), x.to(torch.bfloat16), rounded)

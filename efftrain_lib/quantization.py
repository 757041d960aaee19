"""Block-wise absmax quantization, NormalFloat4 and double quantization, built from their definitions.

QLoRA (Dettmers et al. 2023, arXiv 2305.14314) stores a frozen weight as 4-bit codes: the flat tensor is
cut into blocks of 64 values, each block divided by its largest magnitude (its absmax, kept as a scale)
and every value replaced by the index of the nearest value of a 16-entry code table. Three tables:

  nf4   NormalFloat4: quantiles of N(0, 1), normalised to [-1, 1], asymmetric so that 0 is exact
        (7 negative values, 8 positive): the paper's data type, equal to bitsandbytes' table (1e-7)
  int4  uniform: k / 7 for k = -8..7 (absmax int4; the code -8/7 is never the nearest)
  fp4   E2M1 (1 sign, 2 exponent, 1 mantissa bit), normalised by its largest value 6; +0 and -0 are two
        codes for one value

Double quantization stores the fp32 absmax scales themselves in 8 bits: torchao's scheme (to_nf4 in
torchao 0.18): subtract their mean, then per group of 256 scales an int8 code with the factor
256 / (2 absmax), rounded half to even and clamped to [-128, 127]. The course allows a last partial group.

    codes, absmax = quantize_blockwise_absmax(w, 64, nf4_code_values())
    w_hat = dequantize_blockwise_absmax(codes, absmax, nf4_code_values(), 64, w.shape)
    q = QuantizedTensor.quantize(w, "nf4", block_size=64, double_quant_block=256)   # packed, 4.127 bits
    q.nbytes, q.dequantize(torch.bfloat16)

Conventions (pinned for the chapter's exercises): indices are flat uint8, one per value; absmax is
float32, one per block; arithmetic is float32 whatever the input's dtype; a size that is not a multiple
of the block size is refused (ValueError: pad the tensor yourself if you mean to), as is a non-finite
value; a non-floating tensor is a TypeError; a code table must be 2^b sorted values, b <= 8.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from efftrain_lib.quant_math import check_block_size

__all__ = ["CODES", "DoubleQuantized", "NF4_PUBLISHED", "QuantizedTensor", "check_code", "code_values",
           "double_dequantize", "double_quantize", "dequantize_blockwise_absmax", "dynamic_code_values",
           "fp4_code_values", "int4_code_values", "int8_code_values", "nearest_code_indices", "nf4_code_values",
           "pack_4bit", "quantize_blockwise_absmax", "unpack_4bit"]

#: bitsandbytes' NF4 table (csrc kernels, dDequantizeNF4), the values torchao rounds to 4 decimals.
NF4_PUBLISHED = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0)
#: The outermost probability of NF4's quantiles: Q(1) is infinite, so bitsandbytes trims it to the mean of
#: 1 - 1/(2*15) and 1 - 1/(2*16) (create_normal_map's offset 0.9677083).
NF4_OFFSET = (1 - 1 / 30 + 1 - 1 / 32) / 2


# ----------------------------------------------------------------------------------------------
# Code tables
# ----------------------------------------------------------------------------------------------


def nf4_code_values() -> torch.Tensor:
    """NormalFloat4 from its definition: 8 positive quantiles of N(0, 1) at probabilities evenly spaced
    from NF4_OFFSET down to 1/2 (excluded), 7 negative ones likewise, and an exact 0; normalised by the
    largest, so the table spans [-1, 1]. float32, ascending."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    positive = normal.icdf(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.max()).float()


def int4_code_values() -> torch.Tensor:
    """Uniform absmax int4: k / 7 for k = -8..7 (16 codes; after absmax scaling -8/7 is never nearest)."""
    return torch.arange(-8, 8, dtype=torch.float32) / 7


def fp4_code_values() -> torch.Tensor:
    """FP4 E2M1 (exponent bias 1, subnormals at exponent 0), every bit pattern decoded, divided by 6."""
    values = []
    for bits in range(16):
        sign, exponent, mantissa = bits >> 3, (bits >> 1) & 0b11, bits & 1
        magnitude = mantissa * 0.5 if exponent == 0 else (1 + mantissa / 2) * 2 ** (exponent - 1)
        values.append(-magnitude if sign else magnitude)
    return torch.tensor(sorted(values), dtype=torch.float32) / 6


def int8_code_values() -> torch.Tensor:
    """Uniform absmax int8: k / 127 for k = -128..127."""
    return torch.arange(-128, 128, dtype=torch.float32) / 127


def dynamic_code_values(signed: bool = True) -> torch.Tensor:
    """bitsandbytes' 8-bit dynamic (tree) code for optimizer state (create_dynamic_map, Dettmers et al.
    2022): a decimal exponent 10^-6..10^0 set by a run of zero bits, then linear fraction bits, so small
    magnitudes keep relative precision. 256 sorted values in [-1, 1] (signed) or [0, 1] (unsigned)."""
    values = [0.0, 1.0]
    for i in range(7):  # exponent 10^(i - 6); more fraction bits the larger the magnitude
        n = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        edges = torch.linspace(0.1, 1, n, dtype=torch.float32)
        means = ((edges[:-1] + edges[1:]) / 2 * 10 ** (i - 6)).tolist()
        values += means + ([-m for m in means] if signed else [])
    return torch.tensor(sorted(values), dtype=torch.float32)


#: The 4-bit and 8-bit code tables by name.
CODES = {"nf4": nf4_code_values, "int4": int4_code_values, "fp4": fp4_code_values, "int8": int8_code_values}


def code_values(name_or_code) -> torch.Tensor:
    """A code table from its name (nf4, int4, fp4, int8) or a tensor (checked)."""
    if isinstance(name_or_code, str):
        if name_or_code not in CODES:
            raise ValueError(f"unknown code table {name_or_code!r}; choose from {', '.join(CODES)} or pass a tensor")
        return CODES[name_or_code]()
    return check_code(name_or_code)


def check_code(code) -> torch.Tensor:
    """The code table as float32 if it is 2^b sorted finite values (1 <= b <= 8); else a clear error."""
    if not isinstance(code, torch.Tensor):
        raise TypeError(f"code must be a 1-D floating torch.Tensor of 2^b values, got {type(code).__name__}")
    if not code.is_floating_point():
        raise TypeError(f"code must hold floating values, got dtype {code.dtype}")
    n = code.numel()
    if code.dim() != 1 or n < 2 or n > 256 or n & (n - 1):
        raise ValueError(f"code must be a 1-D table of 2^b values with 1 <= b <= 8 (16 for 4 bits, 256 for 8); "
                         f"got shape {tuple(code.shape)}")
    code = code.detach().float()
    if not torch.isfinite(code).all():
        raise ValueError("code values must be finite")
    if (code[1:] < code[:-1]).any():
        raise ValueError("code values must be sorted ascending (the nearest-value search relies on it); "
                         "pass torch.sort(code).values")
    return code


def nearest_code_indices(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The index of the nearest code value for every entry (ties go to the lower index, as argmin's do).

    The search, not a [n, 2^b] distance matrix: c_j <= v < c_{j+1} by binary search, then whichever of
    the two neighbours is nearer (the same comparison argmin makes, so the codes are argmin's)."""
    j = (torch.searchsorted(code, scaled.contiguous(), right=True) - 1).clamp_(0, code.numel() - 2)
    lower, upper = code[j], code[j + 1]
    return (j + ((upper - scaled).abs() < (scaled - lower).abs())).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Block-wise absmax
# ----------------------------------------------------------------------------------------------


def _check_tensor(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (fp32, bf16, fp16) to quantize, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: nothing to quantize")
    return x


def _blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """x as float32 blocks [n_blocks, block_size]; refuses sizes that are not a multiple of block_size."""
    block_size = check_block_size(block_size)
    _check_tensor(x)
    if x.numel() % block_size:
        raise ValueError(f"x has {x.numel()} values, not a multiple of block_size {block_size}: pad it to "
                         f"{math.ceil(x.numel() / block_size) * block_size} values or choose a block size that divides it")
    flat = x.detach().reshape(-1).float()
    if not torch.isfinite(flat).all():
        raise ValueError("x contains NaN or inf: a block's absmax would not be finite")
    return flat.view(-1, block_size)


def quantize_blockwise_absmax(x: torch.Tensor, block_size: int, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices uint8 [numel], absmax float32 [numel / block_size]): each block divided by its absmax
    (an all-zero block by 1) and every value mapped to the nearest value of `code`."""
    code = check_code(code)
    blocks = _blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax)).unsqueeze(1)
    return nearest_code_indices(scaled.reshape(-1), code.to(x.device)), absmax


def dequantize_blockwise_absmax(indices: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int,
                                shape) -> torch.Tensor:
    """The inverse: code[index] * its block's absmax, float32, in `shape`."""
    code = check_code(code)
    block_size = check_block_size(block_size)
    numel = math.prod(shape)
    if indices.numel() != numel or absmax.numel() * block_size != numel:
        raise ValueError(f"{indices.numel()} indices and {absmax.numel()} scales of blocks of {block_size} do not "
                         f"make a tensor of shape {tuple(shape)} ({numel} values)")
    values = code.to(indices.device)[indices.reshape(-1).long()].view(-1, block_size)
    return (values * absmax.float().reshape(-1, 1)).reshape(shape)


# ----------------------------------------------------------------------------------------------
# Double quantization (torchao's scheme)
# ----------------------------------------------------------------------------------------------


class DoubleQuantized(NamedTuple):
    """Scales in 8 bits: int8 codes (one per scale), a float32 factor per group, the float32 mean."""

    codes: torch.Tensor
    factors: torch.Tensor
    mean: torch.Tensor


def _groups(values: torch.Tensor, block_size: int) -> torch.Tensor:
    """[n_groups, block_size], the last group padded with zeros (they change no absmax)."""
    pad = -values.numel() % block_size
    return torch.nn.functional.pad(values, (0, pad)).view(-1, block_size)


def double_quantize(absmax: torch.Tensor, block_size: int = 256) -> DoubleQuantized:
    """Quantize block scales to int8: subtract their mean, then per group of `block_size` scales multiply
    by 256 / (2 * the group's absmax), round half to even and clamp to [-128, 127]."""
    block_size = check_block_size(block_size)
    values = _check_tensor(absmax, "absmax").detach().reshape(-1).float()
    if not torch.isfinite(values).all():
        raise ValueError("absmax contains NaN or inf")
    mean = values.mean()
    centred = values - mean
    group_absmax = _groups(centred, block_size).abs().amax(dim=1)
    # A group whose scales all equal the mean has absmax 0: any factor gives codes 0; store 1, not inf.
    factors = 256 / (2 * torch.where(group_absmax > 0, group_absmax, torch.full_like(group_absmax, 128.0)))
    scaled = _groups(centred, block_size) * factors.unsqueeze(1)
    codes = scaled.round().clamp(-128, 127).reshape(-1)[: values.numel()].to(torch.int8)
    return DoubleQuantized(codes, factors.contiguous(), mean)


def double_dequantize(codes: torch.Tensor, factors: torch.Tensor, mean: torch.Tensor, block_size: int = 256) -> torch.Tensor:
    """The scales back in float32: code / its group's factor + mean."""
    block_size = check_block_size(block_size)
    n = codes.numel()
    if factors.numel() != math.ceil(n / block_size):
        raise ValueError(f"{n} scale codes in groups of {block_size} need {math.ceil(n / block_size)} factors, "
                         f"got {factors.numel()}")
    per_code = factors.float().repeat_interleave(block_size)[:n]
    return codes.reshape(-1).float() / per_code + mean.float()


# ----------------------------------------------------------------------------------------------
# Packing and the stored tensor
# ----------------------------------------------------------------------------------------------


def pack_4bit(indices: torch.Tensor) -> torch.Tensor:
    """Two 4-bit indices per byte, the first in the high nibble (torchao's layout); odd sizes pad a 0."""
    flat = indices.reshape(-1).to(torch.uint8)
    if flat.numel() and int(flat.max()) > 15:
        raise ValueError(f"4-bit packing needs indices in 0..15, got {int(flat.max())}")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] << 4) | flat[1::2]


def unpack_4bit(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat uint8 indices back from `pack_4bit`'s bytes."""
    return torch.stack([packed >> 4, packed & 0b1111], dim=1).reshape(-1)[:numel]


@functools.lru_cache(maxsize=64)
def _table(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A kernel's constant, not a tensor the model owns: the meter counts only what the layer stores.
    return torch.tensor(values, dtype=torch.float32, device=device).to(dtype)


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor stored block-wise: packed codes plus scales (fp32, or double-quantized in 8 bits).

    `parts` maps names to the stored tensors ("codes", then "absmax" or "absmax_codes", "absmax_factors",
    "absmax_mean"); a layer registers them as buffers. `nbytes` is what they really hold.
    """

    shape: tuple
    code: tuple  # the code table's values
    block_size: int
    double_quant_block: int | None
    parts: dict

    @classmethod
    def quantize(cls, x: torch.Tensor, code="nf4", *, block_size: int = 64,
                 double_quant_block: int | None = None) -> "QuantizedTensor":
        table = code_values(code)
        if table.numel() not in (16, 256):
            raise ValueError(f"stored codes are 4-bit (16 values) or 8-bit (256 values), got {table.numel()}")
        indices, absmax = quantize_blockwise_absmax(x, block_size, table)
        parts = {"codes": pack_4bit(indices) if table.numel() == 16 else indices}
        if double_quant_block is None:
            parts["absmax"] = absmax
        else:
            dq = double_quantize(absmax, double_quant_block)
            parts.update(absmax_codes=dq.codes, absmax_factors=dq.factors, absmax_mean=dq.mean)
        return cls(tuple(x.shape), tuple(table.tolist()), block_size, double_quant_block, parts)

    @property
    def bits(self) -> int:
        return 4 if len(self.code) == 16 else 8

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors' storages (measured, not computed from a formula)."""
        return sum(t.untyped_storage().nbytes() for t in self.parts.values())

    def dequantize(self, dtype: torch.dtype = torch.float32, parts: dict | None = None) -> torch.Tensor:
        """The tensor back, in `dtype` (parts: the same tensors held elsewhere, e.g. a layer's buffers)."""
        return dequantize_parts(parts or self.parts, self.shape, self.code, self.block_size,
                                self.double_quant_block, dtype)


def dequantize_parts(parts: dict, shape, code: tuple, block_size: int, double_quant_block: int | None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A QuantizedTensor's stored tensors back to values: scales first (double-dequantized if need be),
    then table[code] * scale in float32, cast to `dtype` at the end."""
    numel = math.prod(shape)
    if double_quant_block is None:
        absmax = parts["absmax"]
    else:
        absmax = double_dequantize(parts["absmax_codes"], parts["absmax_factors"], parts["absmax_mean"],
                                   double_quant_block)
    codes = parts["codes"]
    indices = unpack_4bit(codes, numel) if len(code) == 16 else codes
    table = _table(code, codes.device, torch.float32)
    values = table[indices.long()].view(-1, block_size) * absmax.view(-1, 1)
    return values.view(shape).to(dtype)

"""Chapter 6 reference solutions: QLoRA's 4-bit base built from scratch.

The whiteboard version: short and commented. The hardened version (any code table stored packed, FP4 and
int4, whole models, merging, the estimator's formats) lives in efftrain_lib/quantization.py and
efftrain_lib/qlora.py. Grade these with
    python -m efftrain_lib.grade qlora --impl solutions
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# Exercise 6.1: block-wise absmax quantization ---------------------------------------------------
def _check_code(code):
    n = code.numel()
    if code.dim() != 1 or n < 2 or n > 256 or n & (n - 1):  # 2^b values, 1 <= b <= 8
        raise ValueError(f"code must hold 2^b values (b <= 8), got {n}")
    if (code[1:] < code[:-1]).any():
        raise ValueError("code must be sorted ascending")
    return code.float()


def _blocks(x, block_size):
    """x as float32 blocks [n_blocks, block_size], after checking the input."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if not x.is_floating_point():
        raise TypeError(f"can only quantize a floating tensor, got {x.dtype}")
    if x.numel() % block_size:
        raise ValueError(f"{x.numel()} values are not a multiple of block_size {block_size}: pad first")
    return x.detach().float().reshape(-1, block_size)


def quantize_blockwise_absmax(x, block_size, code):
    """(indices uint8, one per value; absmax float32, one per block)."""
    blocks, code = _blocks(x, block_size), _check_code(code)
    absmax = blocks.abs().amax(dim=1)  # one scale per block: an outlier only hurts its own block
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]  # in [-1, 1]
    # Nearest code VALUE (the table is not evenly spaced): distance to each of the 2^b values, argmin.
    indices = (scaled.reshape(-1, 1) - code.reshape(1, -1)).abs().argmin(dim=1)
    return indices.to(torch.uint8), absmax


def dequantize_blockwise_absmax(indices, absmax, code, block_size, shape):
    values = code.float()[indices.reshape(-1).long()].reshape(-1, block_size)
    return (values * absmax.float()[:, None]).reshape(shape)  # each block times its own absmax


# Exercise 6.2: NormalFloat4 from its definition -------------------------------------------------
def nf4_code_values():
    """Quantiles of N(0, 1): 8 positive, 7 negative, and an exact zero, normalised to [-1, 1]."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    offset = (1 - 1 / 30 + 1 - 1 / 32) / 2  # Q(1) is infinite: bitsandbytes' trimmed end, 0.9677083
    positive = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values > 0
    negative = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values < 0
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.max()).float()  # asymmetric: one more positive code, and 0 exactly


# Exercise 6.3: double quantization (torchao's scheme) ------------------------------------------
def double_quantize(absmax, block_size=256):
    """(int8 codes, one factor per group of block_size scales, the mean)."""
    values = absmax.float().reshape(-1)
    mean = values.mean()
    centred = values - mean  # scales are all positive: centring doubles int8's useful range
    pad = -centred.numel() % block_size  # a last partial group is allowed
    groups = F.pad(centred, (0, pad)).reshape(-1, block_size)
    group_absmax = groups.abs().amax(dim=1)
    factors = 256 / (2 * torch.where(group_absmax > 0, group_absmax, torch.full_like(group_absmax, 128.0)))
    codes = (groups * factors[:, None]).round().clamp(-128, 127)  # +absmax maps to 128: clamp it
    return codes.reshape(-1)[: values.numel()].to(torch.int8), factors, mean


def double_dequantize(codes, factors, mean, block_size=256):
    per_code = factors.float().repeat_interleave(block_size)[: codes.numel()]
    return codes.float() / per_code + mean


# Exercise 6.4: QLoRALinear ----------------------------------------------------------------------
class _DequantizeLinear(torch.autograd.Function):
    """x W^T + b with W dequantized in forward and AGAIN in backward: nothing weight-sized is saved."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return F.linear(x, layer.dequantized_weight(x.dtype), layer.bias.to(x.dtype) if layer.bias is not None else None)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out @ ctx.layer.dequantized_weight(grad_out.dtype), None  # the base is frozen: only dx


class QLoRALinear(nn.Module):
    def __init__(self, base, rank, alpha, block_size=64, double_quant=True):
        super().__init__()
        self.out_features, self.in_features = base.weight.shape
        self.block_size, self.double_quant, self.scaling = block_size, double_quant, alpha / rank
        indices, absmax = quantize_blockwise_absmax(base.weight, block_size, nf4_code_values())
        self.register_buffer("codes", (indices[0::2] << 4) | indices[1::2])  # two 4-bit codes per byte
        if double_quant:
            scale_codes, factors, mean = double_quantize(absmax, 256)
            self.register_buffer("scale_codes", scale_codes)
            self.register_buffer("scale_factors", factors)
            self.register_buffer("scale_mean", mean)
        else:
            self.register_buffer("absmax", absmax)
        # Frozen bias (a copy: the fp32 base weight itself is not kept anywhere).
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank))  # B = 0: starts as the base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def dequantized_weight(self, dtype=torch.float32):
        if self.double_quant:
            absmax = double_dequantize(self.scale_codes, self.scale_factors, self.scale_mean, 256)
        else:
            absmax = self.absmax
        indices = torch.stack([self.codes >> 4, self.codes & 15], dim=1).reshape(-1)
        shape = (self.out_features, self.in_features)
        return dequantize_blockwise_absmax(indices, absmax, nf4_code_values(), self.block_size, shape).to(dtype)

    def forward(self, x):
        base = _DequantizeLinear.apply(x, self)
        lora = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling
        return base + lora

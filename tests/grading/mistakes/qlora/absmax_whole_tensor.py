"""Mistake: one absmax for the whole tensor instead of one per block: an outlier flattens every block."""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "absmax: one float32 scale per block": ["absmax over the whole tensor"],
    "codes equal torchao's (its NF4 table)": ["absmax over the whole tensor"],
    "dequantized weight equals torchao's": ["absmax"],
    "any sorted 2^b code table round-trips": ["absmax over the whole tensor"],
    "starts as the quantized base (B = 0)": ["your own quantize", "6.1-6.3"],
    "forward equals LoRA on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "gradients equal LoRA's on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "double_quant=False keeps fp32 scales": ["your own quantize", "6.1-6.3"],
}


def quantize_blockwise_absmax(x, block_size, code):
    flat, code = _solution._blocks(x, block_size).reshape(-1), _solution._check_code(code)
    absmax = flat.abs().amax().reshape(1)  # BUG: one scale for everything
    scaled = flat / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    indices = (scaled.reshape(-1, 1) - code.reshape(1, -1)).abs().argmin(dim=1)
    return indices.to(torch.uint8), absmax


def dequantize_blockwise_absmax(indices, absmax, code, block_size, shape):
    return (code.float()[indices.reshape(-1).long()] * absmax.float()[0]).reshape(shape)  # BUG: the one scale


_solution.quantize_blockwise_absmax = quantize_blockwise_absmax
_solution.dequantize_blockwise_absmax = dequantize_blockwise_absmax
nf4_code_values, QLoRALinear = _solution.nf4_code_values, _solution.QLoRALinear
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize

"""Mistake: a size that is not a multiple of the block size is padded silently instead of refused."""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "bad input gets clear errors": ["not a multiple of block_size", "pad"],
}
_quantize = _solution.quantize_blockwise_absmax


def quantize_blockwise_absmax(x, block_size, code):
    if isinstance(block_size, int) and block_size > 0 and x.is_floating_point() and x.numel() % block_size:
        x = F.pad(x.reshape(-1), (0, -x.numel() % block_size))  # BUG: the caller never learns
    return _quantize(x, block_size, code)



dequantize_blockwise_absmax = _solution.dequantize_blockwise_absmax
nf4_code_values, QLoRALinear = _solution.nf4_code_values, _solution.QLoRALinear
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize


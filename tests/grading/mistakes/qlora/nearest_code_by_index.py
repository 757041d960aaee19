"""Mistake: the nearest code found by index, as if the table were evenly spaced: round((x + 1) / 2 * 15).

The reference solution with quantize_blockwise_absmax replaced (marked BUG); the solution's QLoRALinear
calls it, so the layer inherits the mistake.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "codes equal torchao's (its NF4 table)": ["nearest code by index"],
    "any sorted 2^b code table round-trips": ["nearest code by index"],
    "starts as the quantized base (B = 0)": ["your own quantize", "6.1-6.3"],
    "forward equals LoRA on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "gradients equal LoRA's on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "double_quant=False keeps fp32 scales": ["your own quantize", "6.1-6.3"],
}


def quantize_blockwise_absmax(x, block_size, code):
    blocks, code = _solution._blocks(x, block_size), _solution._check_code(code)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    indices = ((scaled + 1) / 2 * (code.numel() - 1)).round()  # BUG: evenly spaced codes assumed
    return indices.reshape(-1).to(torch.uint8), absmax


_solution.quantize_blockwise_absmax = quantize_blockwise_absmax
dequantize_blockwise_absmax = _solution.dequantize_blockwise_absmax
nf4_code_values, QLoRALinear = _solution.nf4_code_values, _solution.QLoRALinear
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize

"""Mistake: dequantize spreads the scales with repeat (a, b, c, a, b, c...) instead of repeat_interleave."""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "dequantized weight equals torchao's": ["repeat_interleave", "not repeat"],
    "any sorted 2^b code table round-trips": ["repeat_interleave", "not repeat"],
    "starts as the quantized base (B = 0)": ["your own quantize", "6.1-6.3"],
    "forward equals LoRA on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "gradients equal LoRA's on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "double_quant=False keeps fp32 scales": ["your own quantize", "6.1-6.3"],
}


def dequantize_blockwise_absmax(indices, absmax, code, block_size, shape):
    scales = absmax.float().repeat(block_size)  # BUG: value i gets scale i % n_blocks, not i // block_size
    return (code.float()[indices.reshape(-1).long()] * scales).reshape(shape)


_solution.dequantize_blockwise_absmax = dequantize_blockwise_absmax
quantize_blockwise_absmax = _solution.quantize_blockwise_absmax
nf4_code_values, QLoRALinear = _solution.nf4_code_values, _solution.QLoRALinear
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize

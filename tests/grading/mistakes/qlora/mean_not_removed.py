"""Mistake: double quantization without removing the scales' mean (all positive: half the int8 range wasted)."""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "double quantization equals torchao's": ["mean was not removed"],
    "double dequantization recovers the scales": ["mean was not removed"],
    "starts as the quantized base (B = 0)": ["your own quantize", "6.1-6.3"],
    "forward equals LoRA on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "gradients equal LoRA's on the dequantized weight": ["your own quantize", "6.1-6.3"],
}


def double_quantize(absmax, block_size=256):
    values = absmax.float().reshape(-1)
    mean = torch.zeros(())  # BUG: the mean is not subtracted (nor returned)
    groups = F.pad(values, (0, -values.numel() % block_size)).reshape(-1, block_size)
    group_absmax = groups.abs().amax(dim=1)
    factors = 256 / (2 * torch.where(group_absmax > 0, group_absmax, torch.full_like(group_absmax, 128.0)))
    codes = (groups * factors[:, None]).round().clamp(-128, 127)
    return codes.reshape(-1)[: values.numel()].to(torch.int8), factors, mean


_solution.double_quantize = double_quantize

quantize_blockwise_absmax, dequantize_blockwise_absmax = _solution.quantize_blockwise_absmax, _solution.dequantize_blockwise_absmax
nf4_code_values, QLoRALinear = _solution.nf4_code_values, _solution.QLoRALinear
double_dequantize = _solution.double_dequantize


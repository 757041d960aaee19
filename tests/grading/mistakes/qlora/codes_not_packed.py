"""Mistake: one 4-bit code per byte: the base costs 8.1 bits per weight instead of 4.1."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "codes packed two per byte, fp32 weight not kept": ["two 4-bit codes per byte"],
}


class QLoRALinear(_solution.QLoRALinear):
    def __init__(self, base, rank, alpha, block_size=64, double_quant=True):
        super().__init__(base, rank, alpha, block_size, double_quant)
        indices = torch.stack([self.codes >> 4, self.codes & 15], dim=1).reshape(-1)
        self.codes = indices  # BUG: a uint8 per code, half of every byte wasted

    def dequantized_weight(self, dtype=torch.float32):
        absmax = (double_dequantize(self.scale_codes, self.scale_factors, self.scale_mean, 256)
                  if self.double_quant else self.absmax)
        shape = (self.out_features, self.in_features)
        return dequantize_blockwise_absmax(self.codes, absmax, nf4_code_values(), self.block_size, shape).to(dtype)

quantize_blockwise_absmax, dequantize_blockwise_absmax = _solution.quantize_blockwise_absmax, _solution.dequantize_blockwise_absmax
nf4_code_values = _solution.nf4_code_values
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize


"""Mistake: the dequantized weight cached at init (to save time): the fp32 weight is back, no memory saved."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "codes packed two per byte, fp32 weight not kept": ["dequantized weight cached", "no memory is saved"],
    "dequantized weight not saved for backward": ["dequantized weight cached"],
}


class QLoRALinear(_solution.QLoRALinear):
    def __init__(self, base, rank, alpha, block_size=64, double_quant=True):
        super().__init__(base, rank, alpha, block_size, double_quant)
        self.cached_weight = self.dequantized_weight()  # BUG: a full-precision copy lives in the layer

    def forward(self, x):
        base = F.linear(x, self.cached_weight.to(x.dtype), self.bias.to(x.dtype) if self.bias is not None else None)
        return base + F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling

quantize_blockwise_absmax, dequantize_blockwise_absmax = _solution.quantize_blockwise_absmax, _solution.dequantize_blockwise_absmax
nf4_code_values = _solution.nf4_code_values
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize


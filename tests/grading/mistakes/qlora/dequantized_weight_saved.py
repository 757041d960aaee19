"""Mistake: forward calls F.linear on the dequantized weight, so autograd keeps it for backward: no memory saved."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "dequantized weight not saved for backward": ["dequantized weight cached", "again in backward"],
}


class QLoRALinear(_solution.QLoRALinear):
    def forward(self, x):
        weight = self.dequantized_weight(x.dtype)  # BUG: F.linear saves it until backward
        base = F.linear(x, weight, self.bias.to(x.dtype) if self.bias is not None else None)
        return base + F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling

quantize_blockwise_absmax, dequantize_blockwise_absmax = _solution.quantize_blockwise_absmax, _solution.dequantize_blockwise_absmax
nf4_code_values = _solution.nf4_code_values
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize


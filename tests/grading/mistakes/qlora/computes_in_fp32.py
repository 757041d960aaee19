"""Mistake: the layer always computes in fp32, whatever the input's dtype (bf16 in, fp32 out)."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "computes in the input's dtype": ["input's dtype"],
}


class QLoRALinear(_solution.QLoRALinear):
    def forward(self, x):
        return super().forward(x.float())  # BUG: the input's dtype is ignored

quantize_blockwise_absmax, dequantize_blockwise_absmax = _solution.quantize_blockwise_absmax, _solution.dequantize_blockwise_absmax
nf4_code_values = _solution.nf4_code_values
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize


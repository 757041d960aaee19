"""Mistake: lora_B initialised like lora_A, so the layer does not start as the base."""

import math

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "starts as the quantized base (B = 0)": ["B initialised non-zero"],
}


class QLoRALinear(_solution.QLoRALinear):
    def __init__(self, base, rank, alpha, block_size=64, double_quant=True):
        super().__init__(base, rank, alpha, block_size, double_quant)
        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))  # BUG: B must start at zero

quantize_blockwise_absmax, dequantize_blockwise_absmax = _solution.quantize_blockwise_absmax, _solution.dequantize_blockwise_absmax
nf4_code_values = _solution.nf4_code_values
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize


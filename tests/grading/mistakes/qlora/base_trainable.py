"""Mistake: the base nn.Linear kept inside the layer and never frozen: its fp32 weight trains (and stays)."""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "only lora_A and lora_B train": ["base left trainable"],
    "codes packed two per byte, fp32 weight not kept": ["fp32 weight is still alive"],
}


class QLoRALinear(_solution.QLoRALinear):
    def __init__(self, base, rank, alpha, block_size=64, double_quant=True):
        super().__init__(base, rank, alpha, block_size, double_quant)
        self.base = base  # BUG: kept, and base.weight still requires grad

quantize_blockwise_absmax, dequantize_blockwise_absmax = _solution.quantize_blockwise_absmax, _solution.dequantize_blockwise_absmax
nf4_code_values = _solution.nf4_code_values
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize


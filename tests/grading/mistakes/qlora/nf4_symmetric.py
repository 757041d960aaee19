"""Mistake: 16 symmetric quantiles at evenly spaced probabilities: no exact zero, not the NF4 table."""

from pathlib import Path

import torch
import torch.nn.functional as F

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "qlora.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "NF4 equals the published table": ["no exact zero", "asymmetric"],
    "starts as the quantized base (B = 0)": ["your own quantize", "6.1-6.3"],
    "forward equals LoRA on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "gradients equal LoRA's on the dequantized weight": ["your own quantize", "6.1-6.3"],
    "double_quant=False keeps fp32 scales": ["your own quantize", "6.1-6.3"],
}


def nf4_code_values():
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    probabilities = torch.linspace(1 - 0.9677083, 0.9677083, 16, dtype=torch.float64)  # BUG: symmetric, no 0
    values = normal.icdf(probabilities)
    return (values / values.max()).float()


_solution.nf4_code_values = nf4_code_values

quantize_blockwise_absmax, dequantize_blockwise_absmax = _solution.quantize_blockwise_absmax, _solution.dequantize_blockwise_absmax
QLoRALinear = _solution.QLoRALinear
double_quantize, double_dequantize = _solution.double_quantize, _solution.double_dequantize


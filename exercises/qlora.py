"""Chapter 6 exercises: QLoRA's 4-bit frozen base, built from scratch.

Fill in the functions and the class below, then grade them, from notebooks/06_qlora.ipynb:
    from efftrain_lib.grade import check; check("qlora")
or from a terminal at the repository root:
    python -m efftrain_lib.grade qlora
Keep the names and signatures: the graders call exactly these (and compare with torchao's NF4).
solutions/qlora.py has answers (try first!).
"""

import math  # noqa: F401

import torch  # noqa: F401
import torch.nn as nn
import torch.nn.functional as F  # noqa: F401


def quantize_blockwise_absmax(x, block_size, code):
    """Block-wise absmax quantization: returns (indices, absmax).

    Flatten x and cut it into blocks of `block_size` values; divide each block by its absmax (its largest
    magnitude; an all-zero block by 1) and map every value to the index of the NEAREST value in `code`
    (a sorted table of 2^b values, b <= 8). indices: uint8, one per value (flat); absmax: float32, one per
    block. Errors: ValueError if x.numel() is not a multiple of block_size, if block_size <= 0, or if
    code is not sorted or not 2^b values; TypeError if x is not floating.
    """
    raise NotImplementedError(
        "Exercise 6.1: quantize_blockwise_absmax (see notebooks/06_qlora.ipynb, "
        "'Exercise 6.1: block-wise absmax quantization')"
    )


def dequantize_blockwise_absmax(indices, absmax, code, block_size, shape):
    """The inverse: code[index] * its block's absmax, float32, reshaped to `shape`."""
    raise NotImplementedError(
        "Exercise 6.1: dequantize_blockwise_absmax (see notebooks/06_qlora.ipynb, "
        "'Exercise 6.1: block-wise absmax quantization')"
    )


def nf4_code_values():
    """The 16 NormalFloat4 values, built from their definition: float32, ascending, equal to the
    published table within 1e-6 (quantiles of N(0, 1), asymmetric, with an exact zero)."""
    raise NotImplementedError(
        "Exercise 6.2: nf4_code_values (see notebooks/06_qlora.ipynb, 'Exercise 6.2: NormalFloat4')"
    )


def double_quantize(absmax, block_size=256):
    """Quantize the block scales to 8 bits (torchao's scheme): returns (codes, factors, mean).

    Subtract the scales' mean; per group of `block_size` scales (the last group may be partial) compute
    factor = 256 / (2 * the group's absmax) and codes = round(scale * factor) clamped to [-128, 127], as
    int8. factors: float32, one per group; mean: a float32 scalar tensor.
    """
    raise NotImplementedError(
        "Exercise 6.3: double_quantize (see notebooks/06_qlora.ipynb, 'Exercise 6.3: double quantization')"
    )


def double_dequantize(codes, factors, mean, block_size=256):
    """The scales back, float32: code / its group's factor + mean."""
    raise NotImplementedError(
        "Exercise 6.3: double_dequantize (see notebooks/06_qlora.ipynb, 'Exercise 6.3: double quantization')"
    )


class QLoRALinear(nn.Module):
    """QLoRALinear(base: nn.Linear, rank, alpha, block_size=64, double_quant=True).

    Stores base.weight as NF4 codes packed two per byte, with absmax scales (double-quantized when
    double_quant), and not the fp32 weight; keeps base.bias frozen. lora_A [rank, in] (kaiming uniform,
    a=sqrt(5)) and lora_B [out, rank] (zeros) are the only tensors that require grad.
    forward(x) = x W^T + b + (x A^T B^T) * alpha / rank, with W dequantized on the fly in x's dtype;
    the dequantized W must not be kept for backward: dequantize it again there (a torch.autograd.Function).
    """

    def __init__(self, base, rank, alpha, block_size=64, double_quant=True):
        super().__init__()
        raise NotImplementedError(
            "Exercise 6.4: QLoRALinear (see notebooks/06_qlora.ipynb, 'Exercise 6.4: QLoRALinear')"
        )

    def forward(self, x):
        raise NotImplementedError(
            "Exercise 6.4: QLoRALinear.forward (see notebooks/06_qlora.ipynb, 'Exercise 6.4: QLoRALinear')"
        )

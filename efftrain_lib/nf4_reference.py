"""torchao's NF4 (the reference QLoRA chapter is checked against), read back in the course's terms.

    ref = torchao_nf4(weight, block_size=64, scaler_block_size=256)
    ref.indices, ref.absmax, ref.scale_codes, ref.scale_factors, ref.scale_mean, ref.dequantized, ref.table

torchao (`to_nf4`, torchao.quantization.quantize_.workflows.nf4.nf4_tensor in 0.18; pure PyTorch,
CPU-capable) stores the same things the course's QuantizedTensor does: codes packed two per byte (first in
the high nibble), absmax per block, double-quantized as int8 with a factor per group of scales and their
mean. Two differences the chapter explains: its code table is bitsandbytes' NF4 rounded to 4 decimals
(`table`), and it computes in the weight's dtype (the course in fp32), so only fp32 weights compare
bit for bit. It also requires the number of blocks to be a multiple of `scaler_block_size`.

Importing torchao logs two warnings on a CPU-only torch (CUDA kernels it cannot load, a deprecated
pytree registration); they say nothing about NF4, and efftrain_lib/__init__.py quiets exactly those two
loggers (peft and transformers import torchao too, whenever it is installed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import torch

from efftrain_lib.quantization import unpack_4bit

__all__ = ["TorchaoNF4", "torchao_nf4", "torchao_nf4_module"]


@functools.cache
def torchao_nf4_module() -> ModuleType:
    """torchao's nf4_tensor module (imported on first use: torchao takes seconds to import)."""
    from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor

    return nf4_tensor


@dataclass(frozen=True)
class TorchaoNF4:
    """torchao's NF4 of one weight, field by field."""

    tensor: torch.Tensor  # the NF4Tensor itself
    indices: torch.Tensor  # uint8, one per value (unpacked from quantized_data)
    absmax: torch.Tensor  # the fp32 block absmax before double quantization (get_block_absmax)
    scale_codes: torch.Tensor  # int8, one per block
    scale_factors: torch.Tensor  # one per group of scaler_block_size scales
    scale_mean: torch.Tensor
    dequantized: torch.Tensor  # get_original_weight()
    table: torch.Tensor  # its 16 code values

    @property
    def nbytes(self) -> int:
        """Bytes of what it stores for the weight: packed codes, scale codes, factors, mean."""
        t = self.tensor
        return sum(x.numel() * x.element_size() for x in (t.quantized_data, t.quantized_scalers,
                                                          t.quantization_factor, t.scaler_mean))


def torchao_nf4(weight: torch.Tensor, block_size: int = 64, scaler_block_size: int = 256) -> TorchaoNF4:
    """`torchao`'s to_nf4(weight, block_size, scaler_block_size), with its parts named as the course names them."""
    nf4 = torchao_nf4_module()
    if weight.numel() % block_size or (weight.numel() // block_size) % scaler_block_size:
        raise ValueError(f"torchao's to_nf4 needs the {weight.numel() // block_size} blocks of {block_size} to fill "
                         f"groups of scaler_block_size={scaler_block_size}; pick a scaler_block_size that divides it")
    with torch.no_grad():
        tensor = nf4.to_nf4(weight.detach(), block_size, scaler_block_size)
        return TorchaoNF4(tensor, unpack_4bit(tensor.quantized_data, weight.numel()),
                          nf4.get_block_absmax(weight.detach().flatten(), block_size), tensor.quantized_scalers,
                          tensor.quantization_factor, tensor.scaler_mean, tensor.get_original_weight(), tensor.nf4)

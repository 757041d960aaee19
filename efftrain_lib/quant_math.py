"""Block-wise quantization's storage arithmetic, in one place: the QLoRA layer (efftrain_lib.qlora), the
8-bit optimizer (efftrain_lib.optim8bit), the memory estimator (efftrain_lib.memory) and the chapter's
sliders (efftrain_lib.qlora_explorer) all count bytes with these.

A block-wise format stores, for a tensor of n values cut into blocks of `block_size`:
  codes    `bits` per value, packed (two 4-bit codes per byte)
  scales   one absmax per block: 32-bit, or with double quantization (Dettmers et al. 2023) one int8
           code per block plus, per group of `double_quant_block` scales, one 32-bit factor, and one
           32-bit mean for the whole tensor (torchao's scheme, which the course follows)

    bits_per_parameter(4, 64)                          4 + 32/64 = 4.5
    bits_per_parameter(4, 64, double_quant_block=256)  4 + 8/64 + 32/(64*256) = 4.127
    blockwise_bytes(4096, 4, 64, 256)                  2048 + 64 + 4 + 4 = 2120: what the tensors hold

`bits_per_parameter` is the paper's asymptotic figure; `blockwise_bytes` is exact for one tensor (the
last block may be partial, a tensor's mean costs 4 bytes), and equals the bytes the course's quantized
tensors really hold, which the tests and the benchmark measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BASE_FORMATS", "BlockFormat", "MIN_8BIT_SIZE", "OPTIMIZER_STATE_BLOCK", "OPTIMIZER_STATE_FORMATS",
           "bits_per_parameter", "blockwise_bytes", "check_block_size", "optimizer_state_bytes"]

SCALE_BYTES = 4  # an fp32 absmax, an fp32 double-quantization factor, an fp32 mean
#: 8-bit optimizer state (Dettmers et al. 2022, bitsandbytes): blocks of 2048, tensors smaller than
#: 4096 elements keep 32-bit state (bitsandbytes' min_8bit_size).
OPTIMIZER_STATE_BLOCK = 2048
MIN_8BIT_SIZE = 4096


def check_block_size(block_size, name: str = "block_size") -> int:
    """`block_size` if it is a positive integer; else ValueError saying what is allowed."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"{name} must be a positive integer (e.g. 64), got {block_size!r}")
    return block_size


@dataclass(frozen=True)
class BlockFormat:
    """A block-wise storage format: `bits` per code, blocks of `block_size`, optional double quantization."""

    name: str
    bits: int
    block_size: int = 64
    double_quant_block: int | None = None

    def bytes(self, numel: int) -> int:
        return blockwise_bytes(numel, self.bits, self.block_size, self.double_quant_block)

    @property
    def bits_per_parameter(self) -> float:
        return bits_per_parameter(self.bits, self.block_size, double_quant_block=self.double_quant_block)


#: The frozen base's formats the estimator knows (4-bit: NF4, FP4 and int4 cost the same bytes).
BASE_FORMATS = {
    "int8": BlockFormat("int8", 8, 64),
    "nf4": BlockFormat("nf4", 4, 64),
    "nf4_dq": BlockFormat("nf4_dq", 4, 64, 256),
}
#: Optimizer-state formats the estimator knows besides the precision policy's own dtype ("same").
OPTIMIZER_STATE_FORMATS = ("same", "fp32", "8bit")


def bits_per_parameter(bits: int, block_size: int, *, scale_bits: int = 32,
                       double_quant_block: int | None = None) -> float:
    """The asymptotic bits per value: codes + the block's scale spread over its values."""
    check_block_size(block_size)
    if double_quant_block is None:
        return bits + scale_bits / block_size
    check_block_size(double_quant_block, "double_quant_block")
    return bits + 8 / block_size + 32 / (block_size * double_quant_block)


def blockwise_bytes(numel: int, bits: int, block_size: int, double_quant_block: int | None = None) -> int:
    """Exact bytes of one tensor of `numel` values in a block-wise format (codes packed, scales stored)."""
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be a non-negative integer, got {numel!r}")
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8 (codes packed into bytes), got {bits!r}")
    n_blocks = math.ceil(numel / check_block_size(block_size))
    codes = math.ceil(numel * bits / 8)
    if double_quant_block is None:
        return codes + n_blocks * SCALE_BYTES
    groups = math.ceil(n_blocks / check_block_size(double_quant_block, "double_quant_block"))
    return codes + n_blocks + groups * SCALE_BYTES + SCALE_BYTES


def optimizer_state_bytes(numel: int, n_states: int, state_format: str, element_bytes: int) -> int:
    """Bytes of `n_states` optimizer states for one tensor of `numel` values: in the policy's dtype
    (`element_bytes` each), fp32, or 8-bit block-wise (blocks of 2048, fp32 absmax per block; tensors
    under MIN_8BIT_SIZE values stay fp32, as bitsandbytes does)."""
    if state_format == "same":
        return n_states * numel * element_bytes
    if state_format == "fp32" or (state_format == "8bit" and numel < MIN_8BIT_SIZE):
        return n_states * numel * 4
    if state_format == "8bit":
        return n_states * blockwise_bytes(numel, 8, OPTIMIZER_STATE_BLOCK)
    raise ValueError(f"unknown optimizer state format {state_format!r}; choose from {', '.join(OPTIMIZER_STATE_FORMATS)}")

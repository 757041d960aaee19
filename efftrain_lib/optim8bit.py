"""AdamW with 8-bit state: both moments stored block-wise in 8 bits (Dettmers et al. 2022, "8-bit
Optimizers via Block-wise Quantization", arXiv 2110.02861; bitsandbytes' AdamW8bit), built small.

Adam keeps two fp32 numbers per trainable value, m and v: 8 bytes, twice the weight. Here each is
stored as one uint8 code per value plus one fp32 absmax per block of 2048 values (about 1.002 bytes):

    optimizer = AdamW8bit(model.parameters(), lr=1e-3)
    training.train(model, get_batch, steps=50, optimizer=optimizer)    # the course's one loop steps it

Each step dequantizes m and v to fp32, updates them and the weight exactly as torch.optim.AdamW does
(decoupled weight decay, bias correction), and stores them again. The code tables are bitsandbytes'
dynamic ones (efftrain_lib.quantization.dynamic_code_values): signed for m, unsigned for v, with a
decimal exponent so that tiny second moments are not rounded to zero. Tensors under 4096 values keep
fp32 state, as bitsandbytes does (their state is cheap, and small tensors are often sensitive).

Not here: bitsandbytes' fused CUDA kernels, its StableEmbedding, paged state (see the chapter).
"""

from __future__ import annotations

import math

import torch

from efftrain_lib.quant_math import MIN_8BIT_SIZE, OPTIMIZER_STATE_BLOCK, check_block_size
from efftrain_lib.quantization import dequantize_blockwise_absmax, dynamic_code_values, quantize_blockwise_absmax

__all__ = ["AdamW8bit"]


def _quantize(values: torch.Tensor, code: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 [numel], absmax fp32 [blocks]): the last block padded with zeros for the search only."""
    flat = values.reshape(-1)
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % block_size))
    codes, absmax = quantize_blockwise_absmax(padded, block_size, code)
    return codes[: flat.numel()].clone(), absmax


def _dequantize(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int) -> torch.Tensor:
    n = codes.numel()
    padded = torch.nn.functional.pad(codes, (0, -n % block_size))
    return dequantize_blockwise_absmax(padded, absmax, code, block_size, (padded.numel(),))[:n]


class AdamW8bit(torch.optim.Optimizer):
    """torch.optim.AdamW's update with m and v kept in 8 bits (block-wise, dynamic code tables).

    state per parameter: "step" (a 0-dim fp32 tensor, as torch's AdamW), and either "exp_avg_codes",
    "exp_avg_absmax", "exp_avg_sq_codes", "exp_avg_sq_absmax" (8-bit) or "exp_avg", "exp_avg_sq" (fp32,
    for tensors under `min_8bit_size` values). The meter counts exactly these tensors.

    A parameter group with "optim_bits": 32 keeps fp32 state (bitsandbytes' override_config): what its
    authors recommend for embeddings, whose rows for tokens absent from a batch get a zero gradient, so
    m decays while v, 8-bit and relative to its block's largest value, rounds to 0 and the step m / eps
    explodes (the chapter measures it).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 *, block_size: int = OPTIMIZER_STATE_BLOCK, min_8bit_size: int = MIN_8BIT_SIZE):
        if not lr > 0 or not eps > 0 or weight_decay < 0:
            raise ValueError(f"need lr > 0, eps > 0 and weight_decay >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        check_block_size(block_size)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, optim_bits=8))
        if any(group["optim_bits"] not in (8, 32) for group in self.param_groups):
            raise ValueError("optim_bits (per parameter group) must be 8 or 32")
        self.block_size, self.min_8bit_size = block_size, min_8bit_size
        self.signed_code, self.unsigned_code = dynamic_code_values(True), dynamic_code_values(False)

    def _moments(self, p: torch.Tensor, state: dict, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            if bits == 8 and p.numel() >= self.min_8bit_size:
                zeros = torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
                self._store(state, zeros, zeros)
            else:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
        if "exp_avg" in state:
            return state["exp_avg"], state["exp_avg_sq"]
        m = _dequantize(state["exp_avg_codes"], state["exp_avg_absmax"], self.signed_code.to(p.device), self.block_size)
        v = _dequantize(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"], self.unsigned_code.to(p.device),
                        self.block_size)
        return m.view_as(p), v.view_as(p)

    def _store(self, state: dict, m: torch.Tensor, v: torch.Tensor) -> None:
        if "exp_avg" in state:
            return  # fp32 state was updated in place
        state["exp_avg_codes"], state["exp_avg_absmax"] = _quantize(m, self.signed_code.to(m.device), self.block_size)
        state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"] = _quantize(v, self.unsigned_code.to(v.device),
                                                                          self.block_size)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                state = self.state[p]
                m, v = self._moments(p, state, group["optim_bits"])
                grad = p.grad.float()
                state["step"] += 1
                t = state["step"].item()
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                p.mul_(1 - lr * weight_decay)  # decoupled weight decay, as AdamW
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)  # torch.optim.AdamW's order
                p.addcdiv_(m.to(p.dtype), denom.to(p.dtype), value=-lr / (1 - beta1**t))
                self._store(state, m, v)  # the update used the fp32 values; only storage is 8-bit
        return loss

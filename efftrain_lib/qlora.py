"""QLoRA: LoRA on a frozen base stored in 4 bits, dequantized on the fly (Dettmers et al. 2023).

    model = apply_qlora(load_pretrained(), rank=8, alpha=16)            # NF4 + double quantization
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)
    train(model, get_batch, steps=30, optimizer=optimizer)              # the course's one loop

* `QuantizedLinear` is a frozen nn.Linear whose weight lives as packed 4-bit codes and block scales
  (efftrain_lib.quantization.QuantizedTensor): its fp32 weight is not kept. Every call dequantizes the
  weight in the compute dtype (the input's, or autocast's), multiplies, and drops it.
* `_DequantizedLinear` is that matmul as an autograd.Function: backward dequantizes **again** instead of
  keeping the dequantized weight for dx = g W, so autograd saves nothing but the codes, which the layer
  holds anyway. (A plain `F.linear(x, dequantize())` would save the whole dequantized weight per layer
  until backward: the memory QLoRA exists to save.) The frozen weight needs no gradient, so x is not saved.
* `QLoRALinear` adds LoRA's lora_A [rank, in] and lora_B [out, rank] (PEFT's init, B = 0), the only
  tensors that train; its gradients equal LoRA's on the dequantized weight (tests/test_qlora.py).
* `apply_qlora` quantizes every Linear but the output layer (as QLoRA does) and puts adapters on the
  targets; `merge_qlora` folds adapters back: into a requantized base (4-bit again, which adds a
  quantization error) or into a full-precision Linear.

The chapter's exercise API (exercises/qlora.py) is re-exported here, so the graders grade this file too.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.lora import matching_module_names
from efftrain_lib.lora_math import check_alpha, check_rank, scaling
from efftrain_lib.quantization import (  # noqa: F401 - the exercise API, re-exported
    QuantizedTensor,
    code_values,
    dequantize_blockwise_absmax,
    dequantize_parts,
    double_dequantize,
    double_quantize,
    nf4_code_values,
    quantize_blockwise_absmax,
)
from efftrain_lib.quant_math import check_block_size

__all__ = ["QLoRALinear", "QuantizedLinear", "apply_qlora", "merge_qlora", "qlora_layers", "quantized_layers",
           "nf4_code_values", "quantize_blockwise_absmax", "dequantize_blockwise_absmax", "double_quantize",
           "double_dequantize"]

DOUBLE_QUANT_BLOCK = 256  # scales per double-quantization group (the paper's and torchao's)


class _DequantizedLinear(torch.autograd.Function):
    """y = x W^T + b, W dequantized from the layer's stored parts in forward and again in backward."""

    @staticmethod
    def forward(ctx, x, bias, layer, *parts):
        ctx.layer = layer  # shape, code table, block sizes: plain Python values
        ctx.save_for_backward(*parts)  # the layer's own buffers: no new memory
        weight = layer.dequantize_from(parts, x.dtype)
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        # Read saved_tensors once: under non-reentrant checkpointing each read unpacks again, and a
        # second one is refused ("Unpack is being triggered for a tensor that was already unpacked").
        parts = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            weight = ctx.layer.dequantize_from(parts, grad_output.dtype)  # dequantized again
            grad_x = grad_output @ weight
        return (grad_x, None, None) + (None,) * len(parts)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a Linear computes in: autocast's where it is on, else the input's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class QuantizedLinear(nn.Module):
    """A frozen nn.Linear stored block-wise (NF4 by default, double-quantized scales), dequantized per call.

    The stored parts are buffers (the meter counts them as weights, state_dict saves them); the bias, if
    any, stays a frozen Parameter. Computes in the input's dtype (autocast's under torch.autocast).
    """

    def __init__(self, base: nn.Linear, *, code="nf4", block_size: int = 64, double_quant: bool = True):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"QLoRA quantizes an nn.Linear, got {type(base).__name__}")
        block_size = check_block_size(block_size)
        self.in_features, self.out_features = base.in_features, base.out_features
        stored = QuantizedTensor.quantize(base.weight.detach(), code, block_size=block_size,
                                          double_quant_block=DOUBLE_QUANT_BLOCK if double_quant else None)
        self.shape, self.code, self.block_size = stored.shape, stored.code, block_size
        self.double_quant_block = stored.double_quant_block
        self._part_names = tuple(stored.parts)
        for name, tensor in stored.parts.items():
            self.register_buffer(name, tensor.clone())  # own compact storages
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)

    @property
    def double_quant(self) -> bool:
        return self.double_quant_block is not None

    def parts(self) -> tuple:
        return tuple(getattr(self, name) for name in self._part_names)

    def dequantize_from(self, parts, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_parts(dict(zip(self._part_names, parts)), self.shape, self.code, self.block_size,
                                self.double_quant_block, dtype)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as the forward sees it (a new tensor every call)."""
        return self.dequantize_from(self.parts(), dtype)

    def code_tensor(self) -> torch.Tensor:
        """The layer's code table as a tensor (to build another layer in the same format)."""
        return torch.tensor(self.code, dtype=torch.float32)

    @property
    def weight_nbytes(self) -> int:
        """Bytes the stored weight really holds (codes and scales)."""
        return sum(t.untyped_storage().nbytes() for t in self.parts())

    def extra_repr(self) -> str:
        bits = self.weight_nbytes * 8 / math.prod(self.shape)
        return (f"in_features={self.in_features}, out_features={self.out_features}, {len(self.code)} codes, "
                f"block_size={self.block_size}, double_quant={self.double_quant}, {bits:.3f} bits/param")

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):  # the Function computes in `dtype` itself
            return _DequantizedLinear.apply(x.to(dtype), self.bias, self, *self.parts())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._base_forward(x)


class QLoRALinear(QuantizedLinear):
    """A 4-bit frozen base plus a trainable LoRA: y = dequant(W) x + b + (dropout(x) A^T B^T) * scaling.

    lora_A [rank, in] and lora_B [out, rank] are the only tensors that train (A uniform in +-1/sqrt(in)
    as PEFT, B = 0, so the layer starts as the quantized base). They are created in the base weight's
    dtype (adapter_dtype to choose) and computed in the compute dtype.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, block_size: int = 64, double_quant: bool = True,
                 *, dropout: float = 0.0, code="nf4", use_rslora: bool = False, adapter_dtype=None):
        if isinstance(base, nn.Linear):
            check_rank(rank, base.out_features, base.in_features)
        super().__init__(base, code=code, block_size=block_size, double_quant=double_quant)
        self.rank, self.alpha = rank, check_alpha(alpha)
        self.scaling = scaling(self.alpha, rank, use_rslora)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"LoRA dropout must be a probability in [0, 1), got {dropout!r}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": base.weight.device, "dtype": adapter_dtype or base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"

    def delta_weight(self) -> torch.Tensor:
        """(B @ A) * scaling in fp32, shaped like the weight."""
        return (self.lora_B.detach().float() @ self.lora_A.detach().float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base_forward(x)
        dtype = out.dtype
        autocast = torch.is_autocast_enabled(x.device.type)  # autocast casts the operands itself
        a = self.lora_A if autocast or self.lora_A.dtype == dtype else self.lora_A.to(dtype)
        b = self.lora_B if autocast or self.lora_B.dtype == dtype else self.lora_B.to(dtype)
        # As efftrain_lib.lora.LoRALinear: scale the skinny [tokens, rank] activation, then one addmm.
        h = F.linear(self.dropout(x.to(dtype)), a) * self.scaling
        fused = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, self.rank), b.t())
        return fused.view(out.shape)


# ----------------------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------------------


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply_qlora(model: nn.Module, rank: int, alpha: float, target_modules="all-linear", *, code="nf4",
                block_size: int = 64, double_quant: bool = True, dropout: float = 0.0) -> nn.Module:
    """Quantize every Linear but the output layer (in place), put LoRA on the targets, freeze the rest.

    target_modules: as efftrain_lib.lora.apply_lora ("all-linear", a list of names, a regex); every target
    must be one of the quantized Linears. Everything is checked before the model changes.
    """
    check_rank(rank)
    check_alpha(alpha)
    code_values(code)  # an unknown table fails before anything changes
    quantized = matching_module_names(model, "all-linear")
    targets = set(matching_module_names(model, target_modules))
    modules = dict(model.named_modules())
    if not targets:
        raise ValueError(f"target_modules {target_modules!r} matched no module; Linears here include {quantized[:4]}")
    outside = sorted(targets - set(quantized))
    if outside:
        raise ValueError(f"QLoRA adapts only the quantized Linears (every Linear but the output layer, e.g. "
                         f"{quantized[:2]}); {outside[:4]} are not among them")
    for name in quantized:
        linear = modules[name]
        if linear.weight.numel() % check_block_size(block_size):
            raise ValueError(f"{name}: {linear.weight.numel()} weights are not a multiple of block_size {block_size}")
        if name in targets:
            check_rank(rank, linear.out_features, linear.in_features, layer=name)
    for param in model.parameters():
        param.requires_grad_(False)
    for name in quantized:
        linear = modules[name]
        new = (QLoRALinear(linear, rank, alpha, block_size, double_quant, dropout=dropout, code=code)
               if name in targets else QuantizedLinear(linear, code=code, block_size=block_size, double_quant=double_quant))
        _replace(model, name, new)
    return model


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """Every quantized Linear (with or without an adapter) by full name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def qlora_layers(model: nn.Module) -> dict[str, QLoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QLoRALinear)}


@torch.no_grad()
def merge_qlora(model: nn.Module, *, requantize: bool = True) -> nn.Module:
    """Fold every adapter into its base (in place): dequantize, add (B A) * scaling, then requantize into a
    QuantizedLinear of the same format (4-bit again: the merged weight is rounded to the grid, an error the
    adapter never saw in training) or, with requantize=False, keep an fp32 nn.Linear (no new error)."""
    layers = qlora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no QLoRA layers; call apply_qlora(model, ...) first")
    for name, layer in layers.items():
        merged = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device=layer.codes.device)
        merged.weight.copy_(layer.dequantized_weight(torch.float32) + layer.delta_weight())
        if layer.bias is not None:
            merged.bias.copy_(layer.bias)
        merged.requires_grad_(False)
        _replace(model, name, QuantizedLinear(merged, code=layer.code_tensor(), block_size=layer.block_size,
                                              double_quant=layer.double_quant) if requantize else merged)
    return model

"""Chapter 1 reference solutions: LoRA from scratch, the whiteboard version.

Short and commented, the way you would write it in an interview. The hardened version (validation,
rsLoRA, DoRA, state dicts) lives in efftrain_lib/lora.py. Grade these with
    python -m efftrain_lib.grade lora --impl solutions
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# Exercise 1.1: LoRALinear, init and forward -----------------------------------------------------
class LoRALinear(nn.Module):
    """y = base(x) + dropout(x) @ A^T @ B^T * (alpha / rank), with base frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        # Freeze the pretrained layer, bias included: only A and B train.
        for p in self.base.parameters():
            p.requires_grad_(False)
        # A: down-projection (rank x in), Kaiming-uniform like PEFT, so |A| <= 1/sqrt(in_features).
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        # B: up-projection (out x rank), zeros, so B @ A = 0 and the model starts exactly at the base.
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scaling = alpha / rank  # alpha / r keeps the update size stable when you change r
        self.dropout = nn.Dropout(dropout)  # nn.Dropout is a no-op in eval mode and when p = 0
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:  # the update already lives in base.weight: adding it again would count it twice
            return y
        # Dropout on the LoRA branch only: the frozen path must see the clean input.
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    # Exercise 1.2: merge / unmerge --------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        # (out x rank) @ (rank x in) = out x in, the shape of base.weight.
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: one matmul per layer at inference, zero latency."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out (to keep training, or to switch adapters)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False


# Exercise 1.3: apply_lora ------------------------------------------------------------------------
def apply_lora(model: nn.Module, target_modules, rank: int, alpha: float, dropout: float = 0.0):
    """Wrap every nn.Linear whose name matches a target, PEFT-style; freeze everything else."""
    # Freeze first, so the LoRA parameters created below are the only trainable ones.
    for p in model.parameters():
        p.requires_grad_(False)
    # list(...) because we replace modules while walking the tree.
    for name, module in list(model.named_modules()):
        # PEFT's rule for a list: the full name equals a target or ends with "." + target.
        # Not `target in name`: "q" would then match "q_proj", and "proj" would match "o_proj".
        matched = any(name == t or name.endswith("." + t) for t in target_modules)
        if matched and isinstance(module, nn.Linear):
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name)  # "" -> the model itself
            setattr(parent, child_name, LoRALinear(module, rank, alpha, dropout))
    return model


# Exercise 1.4: count_parameters -------------------------------------------------------------------
def count_parameters(model: nn.Module):
    """(trainable, total); model.parameters() yields a shared (tied) tensor once."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return trainable, total


# Exercise 1.5: DoRA, from LoRALinear ---------------------------------------------------------------
class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024): LoRA on the direction of W, and a trainable magnitude per output row.
    y = (m / n) (W x + s B A x) + bias, with n = ||W + s B A|| per row, a constant for backward."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(base, rank, alpha, dropout)
        # m starts at the row norms of W: with B = 0, m / n = 1 and the layer is exactly base(x).
        self.magnitude = nn.Parameter(base.weight.detach().norm(dim=1))
        self.merged_norm = None  # n of the unmerged weight, kept while merged: unmerge cannot recompute it

    def weight_norm(self) -> torch.Tensor:
        # Detached: the paper (section 4.3) treats the norm as a constant, which saves memory in backward.
        return (self.base.weight + self.delta_weight()).norm(dim=1).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        factor = self.magnitude / self.weight_norm()
        # One dropout mask for the direction term and the LoRA branch (PEFT's convention); the base keeps x.
        # Without dropout: y + (factor - 1) W x + factor s B A x = factor (W x + s B A x) + bias.
        x_drop = self.dropout(x)
        lora = F.linear(F.linear(x_drop, self.lora_A), self.lora_B) * self.scaling
        return y + (factor - 1) * F.linear(x_drop, self.base.weight) + factor * lora

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.merged_norm = self.weight_norm()
            factor = (self.magnitude / self.merged_norm).unsqueeze(1)  # one per output row
            self.base.weight.copy_(factor * (self.base.weight + self.delta_weight()))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            factor = (self.magnitude / self.merged_norm).unsqueeze(1)
            self.base.weight.copy_(self.base.weight / factor - self.delta_weight())
            self.merged = False

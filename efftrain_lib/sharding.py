"""ZeRO from scratch (stages 1 and 2), and stage 3 as PyTorch ships it (FSDP2's fully_shard).

Data parallelism keeps the whole model state on every rank: weights, gradients and optimizer state,
16 bytes per parameter for Adam in fp32 or in mixed precision (Rajbhandari et al. 2020, ZeRO). Sharding
keeps 1/N of some of it per rank:

    stage 1  optimizer state   ShardedOptimizer(params, torch.optim.AdamW, lr=...)   after DDP's all-reduce
    stage 2  + gradients       ShardedGradientOptimizer(...)                         replaces the all-reduce
    stage 3  + parameters      fully_shard_blocks(model)  (torch.distributed.fsdp.fully_shard per block)

Stages 1 and 2 assign *whole parameters* to ranks, balanced by size (`assign_owners`): each rank keeps
the optimizer state of its own parameters only, steps them, and broadcasts them to the others, so every
rank ends the step with the same parameters, equal to the unsharded optimizer's.
PyTorch's stage 1, torch.distributed.optim.ZeroRedundancyOptimizer, does the same (and gives the same
parameters). Stage 2 sends each gradient to its owner only (a reduce, not an all-reduce) the moment
backward produces it, and frees it on the other ranks: a rank holds the gradients it owns, plus the one
in flight. Stage 3 shards every parameter itself (dim 0, a DTensor); fully_shard all-gathers a block's
parameters before its forward and again before its backward, frees them after, and reduce-scatters its
gradients: per step 3 x the parameter bytes travel instead of 2 x (1.5x the communication).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from .data_parallel import require_process_group

__all__ = ["ShardedGradientOptimizer", "ShardedOptimizer", "assign_owners", "fully_shard_blocks"]


def assign_owners(sizes: Iterable[int], world_size: int) -> list[int]:
    """The rank that owns each item (a parameter of `sizes[i]` elements): largest first, each to the
    rank with the least so far (ties: the lowest rank). The same on every rank; balanced within the
    largest item."""
    sizes = list(sizes)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    load = [0] * world_size
    owners = [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[index] = rank
        load[rank] += sizes[index]
    return owners


class ShardedOptimizer(torch.optim.Optimizer):
    """ZeRO stage 1: ShardedOptimizer(params, optimizer_cls, **kwargs).

    Every rank sees every parameter (param_groups, zero_grad clear them all; a scheduler's changes to
    param_groups take effect) but keeps optimizer state only for the parameters it owns: `self.state`
    holds this rank's shard. The gradients must already be the ranks' mean (DDP's all-reduce) when
    step() runs; step() updates this rank's parameters, then each parameter is broadcast from its owner.
    """

    def __init__(self, params, optimizer_cls: type, **kwargs):
        self.rank, self.world_size = require_process_group(type(self).__name__)
        if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
            raise ValueError(f"optimizer_cls must be a torch.optim.Optimizer class (e.g. torch.optim.AdamW), "
                             f"got {optimizer_cls!r}")
        super().__init__(params, kwargs)
        every = [p for group in self.param_groups for p in group["params"]]
        if len({id(p) for p in every}) != len(every):
            raise ValueError("a parameter appears twice in the parameter groups")
        self.owners = dict(zip(map(id, every), assign_owners([p.numel() for p in every], self.world_size)))
        self.local_params = [p for p in every if self.owners[id(p)] == self.rank]
        local_groups = [{**_hyper(group), "params": [p for p in group["params"] if self.owners[id(p)] == self.rank]}
                        for group in self.param_groups]
        self.inner = optimizer_cls(local_groups, **kwargs) if self.local_params else None
        self.state = self.inner.state if self.inner is not None else {}  # this rank's shard only

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.inner is not None:
            for group, local in zip(self.param_groups, self.inner.param_groups):
                local.update(_hyper(group))  # a scheduler changed lr in param_groups: use it
            self._before_inner_step()
            self.inner.step()
        self._broadcast_parameters()
        return loss

    def _before_inner_step(self) -> None:
        pass

    def _broadcast_parameters(self) -> None:
        """Each parameter from its owner to every rank (asynchronous, then one wait for all)."""
        works = [dist.broadcast(p.detach(), src=self.owners[id(p)], async_op=True)
                 for group in self.param_groups for p in group["params"]]
        for work in works:
            work.wait()

    def shard_numel(self) -> int:
        """Elements of the parameters this rank owns (what its optimizer state is proportional to)."""
        return sum(p.numel() for p in self.local_params)


def _hyper(group: dict) -> dict:
    return {k: v for k, v in group.items() if k != "params"}


class ShardedGradientOptimizer(ShardedOptimizer):
    """ZeRO stage 2: stage 1, and each gradient goes to its owner only.

    Use it on the plain model (no DDP wrapper: it does the gradient communication). A hook on every
    parameter reduces the fresh gradient to the parameter's owner (a sum) as soon as backward has it,
    and frees it on every other rank; the owner divides by the world size at step(). Accumulating
    several backwards before a step works: the owner's .grad keeps the running sum, the others send
    each fresh gradient. Clipping by the global norm is not supported (each rank holds part of it).
    """

    def __init__(self, params, optimizer_cls: type, **kwargs):
        super().__init__(params, optimizer_cls, **kwargs)
        self._hooks = [p.register_post_accumulate_grad_hook(self._reduce_to_owner)
                       for group in self.param_groups for p in group["params"] if p.requires_grad]

    @torch.no_grad()
    def _reduce_to_owner(self, param: nn.Parameter) -> None:
        owner = self.owners[id(param)]
        dist.reduce(param.grad, dst=owner)
        if owner != self.rank:
            param.grad = None  # the point of stage 2: only the owner keeps it

    def _before_inner_step(self) -> None:
        for p in self.local_params:
            if p.grad is not None:
                p.grad.div_(self.world_size)  # the sum over ranks -> their mean

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def fully_shard_blocks(model: nn.Module, blocks: Iterable[nn.Module] | None = None, *,
                       param_dtype: torch.dtype | None = None, reduce_dtype: torch.dtype | None = None,
                       reshard_after_forward: bool = True) -> nn.Module:
    """ZeRO stage 3 with PyTorch's FSDP2: fully_shard each block (default: `model.layers`, the decoder
    layers), then the root (embeddings, final norm, head). param_dtype / reduce_dtype: a
    MixedPrecisionPolicy (e.g. bf16 compute, fp32 gradient reduction). Returns the model, sharded in place.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # imported on use: ~0.5 s

    require_process_group("fully_shard_blocks")
    if blocks is None:
        blocks = getattr(model, "layers", None)
        if blocks is None:
            raise ValueError(f"{type(model).__name__} has no `layers`: pass blocks=[the modules to shard one by one]")
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in blocks:
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model

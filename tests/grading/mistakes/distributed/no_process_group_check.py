"""Mistake: no check for an initialised process group: torch's own ValueError surfaces instead.

The reference solution with one change (marked BUG); the rest is the solution's.
"""

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: F401

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "distributed.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'outside a process group: RuntimeError': ['no process-group check', 'RuntimeError'],
    'bucket_mb <= 0: ValueError; outside a process group: RuntimeError': ['no process-group check'],
}


@torch.no_grad()
def broadcast_parameters(module, src=0):
    tensors = list(module.parameters()) + list(module.buffers())  # BUG: no dist.is_initialized() check
    _solution._check_same_shapes(tensors, dist.get_world_size())
    for t in tensors:
        dist.broadcast(t, src=src)


class OverlappedDDP(_solution.OverlappedDDP):
    def __init__(self, module, bucket_mb=None):
        torch.nn.Module.__init__(self)
        if dist.is_initialized():
            super().__init__(module, bucket_mb)
        else:
            broadcast_parameters(module)  # BUG: fails with torch's ValueError, not a RuntimeError


all_reduce_gradients = _solution.all_reduce_gradients
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

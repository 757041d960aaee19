"""Mistake: OverlappedDDP never broadcasts rank 0's weights: each rank keeps its own.

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
    "broadcasts rank 0's weights at construction": ['no broadcast at construction'],
    'per parameter: .grad is the mean after finish_gradient_synchronization()': ["rank 0's weights"],
    'buckets + no_sync accumulation: two SGD steps equal one process': ['one process'],
}


def _no_broadcast(module, src=0):
    pass  # BUG: DDP's constructor broadcasts rank 0's parameters and buffers


class OverlappedDDP(_solution.OverlappedDDP):
    def __init__(self, module, bucket_mb=None):
        saved = _solution.broadcast_parameters
        _solution.broadcast_parameters = _no_broadcast
        try:
            super().__init__(module, bucket_mb)
        finally:
            _solution.broadcast_parameters = saved


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

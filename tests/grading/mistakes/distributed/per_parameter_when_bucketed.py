"""Mistake: bucket_mb is ignored: one all-reduce per parameter even when buckets are asked for.

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
    'buckets: bucket_mb MiB, filled in reverse registration order': ['one all-reduce per parameter'],
}


class OverlappedDDP(_solution.OverlappedDDP):
    def __init__(self, module, bucket_mb=None):
        if bucket_mb is not None and bucket_mb <= 0:
            raise ValueError("bucket_mb must be positive")
        super().__init__(module, None)  # BUG: bucket_mb dropped


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

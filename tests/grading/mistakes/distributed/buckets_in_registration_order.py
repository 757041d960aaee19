"""Mistake: buckets are filled in registration order, so the first bucket is ready last.

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
    'buckets: bucket_mb MiB, filled in reverse registration order': ['registration order', 'last parameter backwards'],
}


class OverlappedDDP(_solution.OverlappedDDP):
    def __init__(self, module, bucket_mb=None):
        super().__init__(module, bucket_mb)
        cap = float("inf") if bucket_mb is None else bucket_mb * 2**20
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets, size = [[]], 0
        for p in params:  # BUG: backward produces the last parameters' gradients first
            nbytes = p.numel() * p.element_size()
            if self.buckets[-1] and (bucket_mb is None or size + nbytes > cap):
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self.bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b}
        self._reset()


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

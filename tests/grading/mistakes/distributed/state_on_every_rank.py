"""Mistake: every rank keeps optimizer state for every parameter (no memory saved).

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
    "state only for this rank's parameters, balanced by size": ['shard state kept on every rank'],
}


class ShardedOptimizer(_solution.ShardedOptimizer):
    def __init__(self, params, optimizer_cls, **kwargs):
        super().__init__(params, optimizer_cls, **kwargs)
        self.inner = optimizer_cls(self.param_groups[0]["params"], **kwargs)  # BUG: all parameters, on every rank
        self.state = self.inner.state


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
OverlappedDDP = _solution.OverlappedDDP
global_token_mean_loss = _solution.global_token_mean_loss

"""Mistake: zero_grad clears only this rank's own parameters.

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
    'zero_grad clears every parameter': ['zero_grad of your shard only'],
}


class ShardedOptimizer(_solution.ShardedOptimizer):
    def zero_grad(self, set_to_none=True):
        self.inner.zero_grad(set_to_none)  # BUG: the other ranks' parameters keep their gradients


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
OverlappedDDP = _solution.OverlappedDDP
global_token_mean_loss = _solution.global_token_mean_loss

"""Mistake: each rank steps its shard but never broadcasts it: the ranks drift apart.

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
    "parameters after 3 AdamW steps equal the unsharded optimizer's, on every rank": ['differ across ranks', 'broadcast'],
}


class ShardedOptimizer(_solution.ShardedOptimizer):
    @torch.no_grad()
    def step(self, closure=None):
        for g, mine in zip(self.param_groups, self.inner.param_groups):
            mine.update({k: v for k, v in g.items() if k != "params"})
        self.inner.step()  # BUG: no broadcast from each parameter's owner afterwards


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
OverlappedDDP = _solution.OverlappedDDP
global_token_mean_loss = _solution.global_token_mean_loss

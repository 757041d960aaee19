"""Mistake: the inner optimizer never sees a learning rate set on param_groups (a scheduler's).

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
    'a learning rate set on param_groups takes effect': ['stale hyperparameters'],
}


class ShardedOptimizer(_solution.ShardedOptimizer):
    @torch.no_grad()
    def step(self, closure=None):
        self.inner.step()  # BUG: param_groups' lr never copied into the inner optimizer
        for g in self.param_groups:
            for p in g["params"]:
                dist.broadcast(p, src=self.owner[p])


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
OverlappedDDP = _solution.OverlappedDDP
global_token_mean_loss = _solution.global_token_mean_loss

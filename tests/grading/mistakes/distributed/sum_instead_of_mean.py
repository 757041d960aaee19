"""Mistake: all_reduce_gradients sums the ranks' gradients and never divides by the world size.

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
    'every .grad becomes the mean over ranks': ['sum instead of mean', 'world size'],
    'two SGD steps equal one process on the concatenated batch': ['one process'],
}


@torch.no_grad()
def all_reduce_gradients(module):
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)  # BUG: the sum over ranks; the mean needs / world size


broadcast_parameters = _solution.broadcast_parameters
OverlappedDDP = _solution.OverlappedDDP
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

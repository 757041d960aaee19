"""Mistake: all_reduce_gradients all-reduces every parameter, even one whose .grad is None.

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
    'every .grad becomes the mean over ranks': ['None', 'skip'],
    'parameters without a gradient stay None': ['None', 'skip'],
}


@torch.no_grad()
def all_reduce_gradients(module):
    world = dist.get_world_size()
    for p in module.parameters():
        dist.all_reduce(p.grad)  # BUG: p.grad is None for a parameter the loss did not use
        p.grad /= world


broadcast_parameters = _solution.broadcast_parameters
OverlappedDDP = _solution.OverlappedDDP
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

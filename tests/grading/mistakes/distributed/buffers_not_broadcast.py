"""Mistake: broadcast_parameters broadcasts the parameters but not the buffers.

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
    "every rank ends with rank src's parameters and buffers": ['buffers not broadcast'],
    'two SGD steps equal one process on the concatenated batch': ['one process'],
    "broadcasts rank 0's weights at construction": ['buffers'],
    'per parameter: .grad is the mean after finish_gradient_synchronization()': ["rank 0's weights and buffers"],
    'buckets + no_sync accumulation: two SGD steps equal one process': ['one process'],
}


@torch.no_grad()
def broadcast_parameters(module, src=0):
    rank, world = _solution._require_group("broadcast_parameters")
    _solution._check_same_shapes(list(module.parameters()) + list(module.buffers()), world)
    for t in module.parameters():  # BUG: module.buffers() are model state too
        dist.broadcast(t, src=src)


_solution.broadcast_parameters = broadcast_parameters  # the solution's OverlappedDDP uses it
all_reduce_gradients = _solution.all_reduce_gradients
OverlappedDDP = _solution.OverlappedDDP
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

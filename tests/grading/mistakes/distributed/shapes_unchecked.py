"""Mistake: broadcast_parameters broadcasts without checking that every rank's shapes match.

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
    'ranks with different shapes: ValueError, not a silent broadcast': ['shapes unchecked', 'ValueError'],
}


@torch.no_grad()
def broadcast_parameters(module, src=0):
    _solution._require_group("broadcast_parameters")
    for t in list(module.parameters()) + list(module.buffers()):  # BUG: no shape check first
        dist.broadcast(t, src=src)


_solution.broadcast_parameters = broadcast_parameters  # the solution's OverlappedDDP uses it
all_reduce_gradients = _solution.all_reduce_gradients
OverlappedDDP = _solution.OverlappedDDP
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

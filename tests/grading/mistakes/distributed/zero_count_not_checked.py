"""Mistake: a global token count of 0 returns NaN instead of raising ValueError.

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
    'no labelled token on any rank: ValueError': ['ValueError', 'NaN'],
}


def global_token_mean_loss(logits, labels, ignore_index=-100):
    world = dist.get_world_size()
    count = (labels != ignore_index).sum().to(torch.int64)
    dist.all_reduce(count)  # BUG: no check for 0 below
    summed = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=ignore_index, reduction="sum")
    return summed * world / count


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
OverlappedDDP = _solution.OverlappedDDP
ShardedOptimizer = _solution.ShardedOptimizer

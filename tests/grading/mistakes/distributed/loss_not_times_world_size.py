"""Mistake: the summed loss is divided by the global count but not multiplied by the world size.

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
    "unequal token counts: the gradient of the token mean over every rank's tokens": ['multiply by the world size'],
    'the value: summed loss x world size / global labelled count': ['multiply by the world size'],
}


def global_token_mean_loss(logits, labels, ignore_index=-100):
    _solution._require_group("global_token_mean_loss")
    count = (labels != ignore_index).sum().to(torch.int64)
    dist.all_reduce(count)
    if count.item() == 0:
        raise ValueError("no labelled token")
    summed = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=ignore_index, reduction="sum")
    return summed / count  # BUG: the ranks' gradients are averaged afterwards: x world size is missing


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
OverlappedDDP = _solution.OverlappedDDP
ShardedOptimizer = _solution.ShardedOptimizer

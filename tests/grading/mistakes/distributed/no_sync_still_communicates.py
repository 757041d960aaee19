"""Mistake: no_sync() does not stop the all-reduces: every micro-batch is sent.

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
    'no_sync: nothing sent; the next backward sends the accumulated sum': ['no_sync still communicates'],
    'buckets + no_sync accumulation: two SGD steps equal one process': ['one process'],
}


class OverlappedDDP(_solution.OverlappedDDP):
    def no_sync(self):
        import contextlib

        return contextlib.nullcontext()  # BUG: backward under no_sync still all-reduces


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

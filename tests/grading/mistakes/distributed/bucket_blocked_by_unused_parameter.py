"""Mistake: a bucket holding an unused parameter never fires: finish launches nothing.

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
    'a parameter without a gradient never holds up its bucket': ['bucket that never fires'],
}


class OverlappedDDP(_solution.OverlappedDDP):
    @torch.no_grad()
    def finish_gradient_synchronization(self):
        # BUG: buckets still waiting for a gradient that never comes are not launched here
        for work, flat, params in self.pending:
            work.wait()
            flat /= self.world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        self._reset()


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

"""Mistake: finish_gradient_synchronization reads the all-reduced buffers without wait().

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
    'per parameter: .grad is the mean after finish_gradient_synchronization()': ['never waited', 'wait()'],
    'buckets: bucket_mb MiB, filled in reverse registration order': ['never waited'],
    'no_sync: nothing sent; the next backward sends the accumulated sum': ['never waited'],
    'a parameter without a gradient never holds up its bucket': ['never waited'],
    'buckets + no_sync accumulation: two SGD steps equal one process': ['one process'],
}


class OverlappedDDP(_solution.OverlappedDDP):
    @torch.no_grad()
    def finish_gradient_synchronization(self):
        if self.sync:
            while self.next < len(self.buckets):
                self._launch(self.next)
                self.next += 1
        for work, flat, params in self.pending:
            # BUG: no work.wait(): an asynchronous all-reduce's result is undefined until then
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

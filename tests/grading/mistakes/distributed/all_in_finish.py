"""Mistake: every all-reduce is launched in finish_gradient_synchronization: nothing overlaps backward.

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
    'overlap: all-reduces start during backward, last layers first': ['nothing overlapped', 'post_accumulate_grad_hook'],
}


class OverlappedDDP(_solution.OverlappedDDP):
    def _on_grad(self, p):
        pass  # BUG: the hooks do nothing; everything is sent after backward

    @torch.no_grad()
    def finish_gradient_synchronization(self):
        if self.sync:
            for i in range(len(self.buckets)):
                self._launch(i)
            self.next = len(self.buckets)
        super().finish_gradient_synchronization()


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

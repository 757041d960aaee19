"""Mistake: a tensor hook (register_hook) all-reduces the incoming gradient before it is accumulated into .grad.

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
    'per parameter: .grad is the mean after finish_gradient_synchronization()': ['post-accumulate-grad hook', 'register_hook'],
    'buckets: bucket_mb MiB, filled in reverse registration order': ['one all-reduce per parameter'],
    'no_sync: nothing sent; the next backward sends the accumulated sum': ['before it is accumulated'],
    'a parameter without a gradient never holds up its bucket': ['post-accumulate-grad hook'],
    'buckets + no_sync accumulation: two SGD steps equal one process': ['one process'],
}


class OverlappedDDP(torch.nn.Module):
    def __init__(self, module, bucket_mb=None):
        super().__init__()
        self.rank, self.world = _solution._require_group("OverlappedDDP")
        if bucket_mb is not None and bucket_mb <= 0:
            raise ValueError("bucket_mb must be positive")
        self.module = module
        broadcast_parameters(module)
        self.sync, self.pending = True, []
        for p in module.parameters():
            p.register_hook(self._on_grad)  # BUG: fires before accumulation into p.grad

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def no_sync(self):
        return _NoSync(self)

    def _on_grad(self, grad):
        if self.sync:
            self.pending.append((dist.all_reduce(grad, async_op=True), grad))
        return grad

    @torch.no_grad()
    def finish_gradient_synchronization(self):
        for work, grad in self.pending:
            work.wait()
            grad /= self.world
        self.pending = []


class _NoSync:
    def __init__(self, ddp):
        self.ddp = ddp

    def __enter__(self):
        self.ddp.sync = False

    def __exit__(self, *exc):
        self.ddp.sync = True


broadcast_parameters = _solution.broadcast_parameters
all_reduce_gradients = _solution.all_reduce_gradients
global_token_mean_loss = _solution.global_token_mean_loss
ShardedOptimizer = _solution.ShardedOptimizer

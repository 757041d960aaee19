"""Chapter 5 exercises: data parallelism and ZeRO stage 1 from scratch on torch.distributed.

Fill in the functions and classes below, then grade them, from notebooks/05_distributed.ipynb:
    from efftrain_lib.grade import check; check("distributed")
or from a terminal at the repository root:
    python -m efftrain_lib.grade distributed
The grader starts two processes (ranks) in a gloo process group on this machine and calls your code in
both: every function runs inside an initialised process group (torch.distributed.get_rank() and
get_world_size() work). Outside one, raise RuntimeError. Keep the names and signatures: the graders call
exactly these. solutions/distributed.py has answers (try first!).
"""

import contextlib  # noqa: F401

import torch
import torch.distributed as dist  # noqa: F401
import torch.nn.functional as F  # noqa: F401

IGNORE_INDEX = -100  # labels equal to this are not counted in the loss


def broadcast_parameters(module, src=0):
    """Every rank ends with rank `src`'s parameters and buffers (in place, in the module's own tensors).

    First check that every rank holds parameters of the same shapes (gloo broadcasts mismatched tensors
    without a word): raise ValueError if they differ. Outside a process group: RuntimeError.
    """
    raise NotImplementedError(
        "Exercise 5.1: broadcast_parameters (see notebooks/05_distributed.ipynb, 'Exercise 5.1: broadcast_parameters')"
    )


def all_reduce_gradients(module):
    """After backward: every parameter's .grad becomes the mean of the ranks' .grad (all-reduce, then
    divide by the world size). Parameters whose .grad is None are skipped and stay None."""
    raise NotImplementedError(
        "Exercise 5.2: all_reduce_gradients (see notebooks/05_distributed.ipynb, 'Exercise 5.2: all_reduce_gradients')"
    )


class OverlappedDDP(torch.nn.Module):
    """OverlappedDDP(module, bucket_mb=None): data parallelism with the gradient all-reduce overlapped
    with backward.

    __init__: broadcast rank 0's parameters and buffers (as DDP does); bucket_mb None: one asynchronous
    all-reduce per parameter; a number: buckets of at most bucket_mb MiB (2**20 bytes), filled in reverse
    registration order, one all-reduce per bucket. bucket_mb <= 0: ValueError. Outside a process group:
    RuntimeError.
    forward(*args, **kwargs): calls the module.
    During backward: as each gradient becomes final (a post-accumulate-grad hook), launch the all-reduce
    of its parameter (or of its bucket once every parameter in it is ready) with async_op=True.
    finish_gradient_synchronization(): called after backward; launch any bucket not yet launched (a
    parameter that got no gradient keeps .grad None and must not hold its bucket back), wait() on every
    handle, and leave the mean over ranks in every .grad. A no-op after a backward under no_sync().
    no_sync(): a context manager under which backward communicates nothing (gradients accumulate in .grad).
    """

    def __init__(self, module, bucket_mb=None):
        super().__init__()
        raise NotImplementedError(
            "Exercise 5.3: OverlappedDDP (see notebooks/05_distributed.ipynb, 'Exercise 5.3: OverlappedDDP')"
        )

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "Exercise 5.3: OverlappedDDP.forward (see notebooks/05_distributed.ipynb, 'Exercise 5.3: OverlappedDDP')"
        )

    def no_sync(self):
        raise NotImplementedError(
            "Exercise 5.3: OverlappedDDP.no_sync (see notebooks/05_distributed.ipynb, 'Exercise 5.3: OverlappedDDP')"
        )

    def finish_gradient_synchronization(self):
        raise NotImplementedError(
            "Exercise 5.3: OverlappedDDP.finish_gradient_synchronization (see notebooks/05_distributed.ipynb, "
            "'Exercise 5.3: OverlappedDDP')"
        )


def global_token_mean_loss(logits, labels, ignore_index=IGNORE_INDEX):
    """A loss whose gradient, averaged over the ranks, is the gradient of the token mean over every rank's
    labelled tokens, even when ranks hold different token counts.

    logits [..., classes] and labels [...] are already aligned (no shift inside). Return this rank's
    summed cross-entropy x world size / the labelled-token count over all ranks. A global count of 0 is a
    ValueError.
    """
    raise NotImplementedError(
        "Exercise 5.4: global_token_mean_loss (see notebooks/05_distributed.ipynb, "
        "'Exercise 5.4: global_token_mean_loss')"
    )


class ShardedOptimizer(torch.optim.Optimizer):
    """ShardedOptimizer(params, optimizer_cls, **kwargs): ZeRO stage 1.

    Assign whole parameters to ranks, balanced by size (the same assignment on every rank). Each rank
    keeps optimizer state only for its own parameters (self.state holds only those), and step() updates
    them with optimizer_cls(**kwargs), then brings every rank back to the same parameters (each
    parameter broadcast from its owner). The gradients are already the mean over ranks when step() runs.
    param_groups hold every parameter: zero_grad() clears them all, and a learning rate set there (by a
    scheduler) takes effect. After N steps the parameters equal the unsharded optimizer's.
    """

    def __init__(self, params, optimizer_cls, **kwargs):
        raise NotImplementedError(
            "Exercise 5.5: ShardedOptimizer (see notebooks/05_distributed.ipynb, 'Exercise 5.5: ShardedOptimizer')"
        )

    def step(self, closure=None):
        raise NotImplementedError(
            "Exercise 5.5: ShardedOptimizer.step (see notebooks/05_distributed.ipynb, 'Exercise 5.5: ShardedOptimizer')"
        )

"""Data parallelism from scratch on torch.distributed: every rank holds the whole model, sees its own
slice of the batch, and the ranks average their gradients before each optimizer step.

    broadcast_parameters(model)            # every rank starts from rank 0's weights
    loss.backward(); all_reduce_gradients(model)   # .grad = the mean over ranks: the synchronous baseline
    ddp = OverlappedDDP(model, bucket_mb=25)       # the same, overlapped with backward, in buckets
    loss = global_token_mean_loss(logits, labels)  # the token mean over every rank's labelled tokens

Why the mean is the big batch's gradient: when every rank's loss is a mean over the same number of
items, the mean of the ranks' gradients is the gradient of the mean over all items. When ranks hold
different token counts (padding, packing), that is false, and the fix is the one of chapter 4 across
ranks: all-reduce the labelled-token count and divide the summed loss by it (x world size, since the
gradients are then averaged): `global_token_mean_loss`, or `global_token_normaliser` for
training.training_step's windows.

OverlappedDDP is DistributedDataParallel's idea in ~150 lines: a post-accumulate-grad hook per
parameter fires the moment its .grad is final, and launches an asynchronous all-reduce (per parameter,
or per bucket of ~bucket_mb MiB filled in reverse registration order, roughly the order backward
produces gradients); buckets are launched in the same order on every rank, so their collectives pair
up. The last layers' gradients travel while the first layers' backward still runs.
`finish_gradient_synchronization()` waits, divides by the world size and leaves the means in .grad;
it runs by itself at the end of every backward (as DDP's reducer does), and calling it again is a
no-op. Under `no_sync()` backward communicates nothing and gradients accumulate locally; the next
backward outside it all-reduces the accumulated sum (accumulation needs no_sync for speed, not for
correctness). A parameter that got no gradient keeps .grad None and never holds up its bucket.

World size 1 is a pass-through (a mean over one rank changes nothing), so the same code runs unchanged
on one process. Bad input: outside a process group, a RuntimeError naming what is missing; ranks whose
parameters differ in shape, a ValueError naming the first one (checked before any collective on them:
gloo broadcasts mismatched sizes silently and aborts the process on an all-reduce of them).

Known limit, shown in the notebook: reentrant gradient checkpointing (use_reentrant=True) runs a nested
backward per checkpointed segment, and the end-of-backward wait then fires at the end of the *inner*
one; use use_reentrant=False with data parallelism (torch's DDP has the same pitfall).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .losses import IGNORE_INDEX

__all__ = ["OverlappedDDP", "SynchronousDDP", "all_reduce_gradients", "broadcast_parameters", "check_same_parameters",
           "global_token_count", "global_token_mean_loss", "global_token_normaliser", "require_process_group"]

MIB = 2**20


def require_process_group(what: str) -> tuple[int, int]:
    """(rank, world size) of the default process group; RuntimeError naming `what` outside one."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{what} needs an initialised process group (torch.distributed.init_process_group): "
                           "start the ranks with efftrain_lib.launcher (WorkerGroup, launch) or torchrun")
    return dist.get_rank(), dist.get_world_size()


def _unique_tensors(tensors) -> list[torch.Tensor]:
    """Each tensor once (tied weights are one parameter), in order."""
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def check_same_parameters(module: nn.Module, what: str = "data parallelism") -> None:
    """Every rank must hold the same parameters and buffers (names, shapes, dtypes): a collective over
    tensors of different sizes would fail or hang. One small all-gather checks it; ValueError names the
    first difference."""
    rank, world = require_process_group(what)
    mine = [(name, tuple(t.shape), str(t.dtype)) for name, t in
            list(module.named_parameters()) + list(module.named_buffers())]
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    for other, theirs in enumerate(everyone):
        if theirs == mine:
            continue
        ours = dict((n, (s, d)) for n, s, d in mine)
        other_map = dict((n, (s, d)) for n, s, d in theirs)
        names = [n for n in dict.fromkeys(list(ours) + list(other_map)) if ours.get(n) != other_map.get(n)]
        first = names[0]
        raise ValueError(f"{what}: the ranks hold different parameters: {first!r} is {ours.get(first, 'missing')} "
                         f"on rank {rank} but {other_map.get(first, 'missing')} on rank {other} (shape, dtype); "
                         "build the same model on every rank")


@torch.no_grad()
def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Every rank ends with rank `src`'s parameters and buffers (checked to match in shape first)."""
    rank, world = require_process_group("broadcast_parameters")
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world:
        raise ValueError(f"src must be a rank in [0, {world}), got {src!r}")
    check_same_parameters(module, "broadcast_parameters")
    for tensor in _unique_tensors(list(module.parameters()) + list(module.buffers())):
        dist.broadcast(tensor.data, src=src)


@torch.no_grad()
def all_reduce_gradients(module: nn.Module) -> None:
    """After backward: every parameter's .grad becomes the mean of the ranks' .grad, one synchronous
    all-reduce per parameter. A parameter without a gradient on every rank is skipped (stays None); one
    that has a gradient on some ranks only counts zero for the others (as DDP's unused parameters do).
    One tiny all-reduce first agrees which parameters have gradients, so no rank waits for a partner."""
    rank, world = require_process_group("all_reduce_gradients")
    params = [p for p in _unique_tensors(module.parameters()) if p.requires_grad]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    dist.all_reduce(has_grad)
    for param, count in zip(params, has_grad.tolist()):
        if count == 0:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad.div_(world)


def global_token_count(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """The labelled positions (label != ignore_index) summed over every rank: one all-reduce."""
    require_process_group("global_token_count")
    count = torch.tensor(int((labels != ignore_index).sum()), dtype=torch.int64)
    dist.all_reduce(count)
    return int(count)


def global_token_mean_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """This rank's summed cross-entropy x world size / every rank's labelled-token count.

    logits [..., classes] and labels [...] already aligned (no causal shift here). Averaged over the
    ranks (as gradient averaging does), it is the token mean over all ranks' labelled tokens, whatever
    their counts. A global count of 0 is a ValueError (the mean would be 0/0).
    """
    rank, world = require_process_group("global_token_mean_loss")
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("logits and labels must be tensors")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)}: "
                         f"labels must have the logits' leading shape {tuple(logits.shape[:-1])}")
    count = global_token_count(labels, ignore_index)
    if count == 0:
        raise ValueError(f"no labelled position on any rank (every label is {ignore_index}): the token mean is 0/0")
    summed = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=ignore_index, reduction="sum")
    return summed * world / count


def global_token_normaliser(window_count: int) -> float:
    """For training.training_step(normaliser=...): divide a window's summed loss by every rank's labelled
    tokens / world size, so that averaged gradients are the global window's token mean."""
    rank, world = require_process_group("global_token_normaliser")
    count = torch.tensor(int(window_count), dtype=torch.int64)
    dist.all_reduce(count)
    return int(count) / world


class _DataParallel(nn.Module):
    """What both wrappers share: the module, rank 0's weights broadcast at construction, forward, no_sync,
    and a post-accumulate-grad hook on every trainable parameter calling `_on_gradient`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.rank, self.world_size = require_process_group(type(self).__name__)
        if not isinstance(module, nn.Module):
            raise ValueError(f"{type(self).__name__} wraps a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        broadcast_parameters(module, src=0)
        self._sync = True
        self.params = [p for p in _unique_tensors(module.parameters()) if p.requires_grad]
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_gradient) for p in self.params]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward under this context communicates nothing: gradients accumulate locally."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _on_gradient(self, param: nn.Parameter) -> None:
        raise NotImplementedError


class SynchronousDDP(_DataParallel):
    """The baseline that OverlappedDDP improves on: backward first, then `all_reduce_gradients`, one
    parameter after another, nothing overlapped. It runs by itself at the end of every backward (so
    training.training_step can drive it), and not under `no_sync()`. Rank 0's weights are broadcast
    at construction."""

    def __init__(self, module: nn.Module):
        self._queued = False
        super().__init__(module)

    def _on_gradient(self, param: nn.Parameter) -> None:
        if self._sync and not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)

    def _after_backward(self) -> None:
        self._queued = False
        all_reduce_gradients(self.module)


# ------------------------------------------------------------------------------------------------
# Overlapped all-reduce, per parameter or in buckets
# ------------------------------------------------------------------------------------------------


class _Bucket:
    """Parameters whose gradients travel together, and the state of the current backward."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.nbytes = sum(p.numel() * p.element_size() for p in params)
        self.ready: set[int] = set()
        self.work = None
        self.flat: torch.Tensor | None = None
        self.sent: list[nn.Parameter] = []


class OverlappedDDP(_DataParallel):
    """OverlappedDDP(module, bucket_mb=None): data parallelism with the gradient all-reduce overlapped
    with backward (see the module docstring). bucket_mb None: one all-reduce per parameter; a number:
    buckets of about that many MiB (2^20 bytes; DDP's default is 25). Rank 0's parameters and buffers
    are broadcast at construction. Outside a process group: RuntimeError; bucket_mb <= 0: ValueError.

    After each synchronised backward: `last_collectives` (how many all-reduces it launched) and
    `last_bytes` (their payload bytes).
    """

    def __init__(self, module: nn.Module, bucket_mb: float | None = None):
        require_process_group("OverlappedDDP")
        if bucket_mb is not None and (isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float))
                                      or not bucket_mb > 0):
            raise ValueError(f"bucket_mb must be a positive number of MiB or None (one all-reduce per parameter), "
                             f"got {bucket_mb!r}")
        self.bucket_mb = bucket_mb
        self._next = 0  # the next bucket to launch: buckets go out in index order on every rank
        self._active = False  # a synchronised backward is under way
        self.last_collectives = 0
        self.last_bytes = 0
        super().__init__(module)
        self.buckets = self._make_buckets(list(reversed(self.params)), bucket_mb)
        self._where = {id(p): (i, j) for i, b in enumerate(self.buckets) for j, p in enumerate(b.params)}

    @staticmethod
    def _make_buckets(params: list[nn.Parameter], bucket_mb: float | None) -> list[_Bucket]:
        if bucket_mb is None:
            return [_Bucket([p]) for p in params]
        cap = bucket_mb * MIB
        buckets, current, size = [], [], 0
        for p in params:
            nbytes = p.numel() * p.element_size()
            if current and (size + nbytes > cap or p.dtype != current[0].dtype):
                buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            buckets.append(_Bucket(current))
        return buckets

    # -- during backward -------------------------------------------------------------------------
    def _on_gradient(self, param: nn.Parameter) -> None:
        if not self._sync:
            return
        if not self._active:  # the first gradient of this backward
            self._active = True
            self.last_collectives = self.last_bytes = 0
            # Wait at the end of this backward, as DDP's reducer does: backward() returns synchronised.
            torch.autograd.Variable._execution_engine.queue_callback(self.finish_gradient_synchronization)
        index, position = self._where[id(param)]
        self.buckets[index].ready.add(position)
        while self._next < len(self.buckets) and self._complete(self.buckets[self._next]):
            self._launch(self.buckets[self._next])
            self._next += 1

    @staticmethod
    def _complete(bucket: _Bucket) -> bool:
        return len(bucket.ready) == len(bucket.params)

    def _launch(self, bucket: _Bucket) -> None:
        """Start the bucket's all-reduce (asynchronous); parameters without a gradient stay out of it."""
        bucket.sent = [p for p in bucket.params if p.grad is not None]
        if not bucket.sent:
            return
        if len(bucket.sent) == 1:
            bucket.flat = bucket.sent[0].grad  # reduced in place: no copy
        else:
            bucket.flat = torch.cat([p.grad.reshape(-1) for p in bucket.sent])
        bucket.work = dist.all_reduce(bucket.flat, async_op=True)
        self.last_collectives += 1
        self.last_bytes += bucket.flat.numel() * bucket.flat.element_size()

    # -- after backward --------------------------------------------------------------------------
    @torch.no_grad()
    def finish_gradient_synchronization(self) -> None:
        """Launch what is left (buckets held up by parameters without gradients), wait for every
        all-reduce, and leave the mean over ranks in each .grad. A no-op when nothing is pending."""
        if not self._active:
            return
        try:
            while self._next < len(self.buckets):
                self._launch(self.buckets[self._next])
                self._next += 1
            for bucket in self.buckets:
                if bucket.work is None:
                    continue
                bucket.work.wait()
                bucket.flat.div_(self.world_size)
                if len(bucket.sent) > 1:
                    offset = 0
                    for p in bucket.sent:
                        n = p.numel()
                        p.grad.copy_(bucket.flat[offset:offset + n].view_as(p.grad))
                        offset += n
        finally:
            for bucket in self.buckets:
                bucket.ready.clear()
                bucket.work = bucket.flat = None
                bucket.sent = []
            self._next = 0
            self._active = False

    def bucket_sizes(self) -> list[int]:
        """Bytes of gradient per bucket, in launch order."""
        return [b.nbytes for b in self.buckets]

"""Chapter 5 reference solutions: data parallelism and ZeRO-1 from scratch on torch.distributed.

The whiteboard version: short and commented. The hardened versions (clear errors, the synchronous
baseline, statistics, ZeRO-2, fully_shard) live in efftrain_lib/data_parallel.py and
efftrain_lib/sharding.py. Every function runs inside an initialised process group (the grader starts
the ranks). Grade these with
    python -m efftrain_lib.grade distributed --impl solutions
"""

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = -100


def _require_group(what):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{what} needs an initialised process group (torch.distributed.init_process_group)")
    return dist.get_rank(), dist.get_world_size()


def _check_same_shapes(tensors, world):
    """Same shapes on every rank, or ValueError: gloo broadcasts mismatched sizes silently (and aborts
    the process on an all-reduce of them), so check before any collective on the tensors themselves."""
    shapes = [tuple(t.shape) for t in tensors]
    everyone = [None] * world
    dist.all_gather_object(everyone, shapes)
    if any(other != shapes for other in everyone):
        raise ValueError("the ranks hold parameters of different shapes: build the same model on every rank")


# Exercise 5.1: broadcast_parameters -------------------------------------------------------------
@torch.no_grad()
def broadcast_parameters(module, src=0):
    """Every rank ends with rank src's parameters and buffers."""
    rank, world = _require_group("broadcast_parameters")
    if not 0 <= src < world:
        raise ValueError(f"src must be a rank in [0, {world}), got {src}")
    tensors = list(module.parameters()) + list(module.buffers())
    _check_same_shapes(tensors, world)
    for t in tensors:
        dist.broadcast(t, src=src)  # in place: the same tensor object, now holding rank src's values


# Exercise 5.2: all_reduce_gradients -------------------------------------------------------------
@torch.no_grad()
def all_reduce_gradients(module):
    """After backward: every .grad becomes the mean over ranks (parameters without one are skipped)."""
    rank, world = _require_group("all_reduce_gradients")
    for p in module.parameters():
        if p.grad is None:  # the same parameters are unused on every rank
            continue
        dist.all_reduce(p.grad)  # SUM over ranks, in place
        p.grad /= world  # the mean: the big batch's gradient when each rank's loss is a mean


# Exercise 5.3: OverlappedDDP --------------------------------------------------------------------
class OverlappedDDP(torch.nn.Module):
    """Gradients all-reduced asynchronously while backward runs: per parameter, or per bucket."""

    def __init__(self, module, bucket_mb=None):
        super().__init__()
        self.rank, self.world = _require_group("OverlappedDDP")
        if bucket_mb is not None and not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be a positive number of MiB or None, got {bucket_mb}")
        self.module = module
        broadcast_parameters(module, src=0)  # every rank starts from rank 0's weights, as DDP does
        params = [p for p in module.parameters() if p.requires_grad]
        # Buckets in reverse registration order: backward produces the last layers' gradients first.
        cap = float("inf") if bucket_mb is None else bucket_mb * 2**20
        self.buckets, size = [[]], 0
        for p in reversed(params):
            nbytes = p.numel() * p.element_size()
            if self.buckets[-1] and (bucket_mb is None or size + nbytes > cap):
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self.bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b}
        self.sync = True
        self._reset()
        for p in params:
            # After accumulation: .grad is final for this backward (a tensor hook would see it before).
            p.register_post_accumulate_grad_hook(self._on_grad)

    def _reset(self):
        self.ready = [0] * len(self.buckets)
        self.next = 0  # buckets are launched in order, so every rank issues the same sequence
        self.pending = []  # (work, flat buffer, params)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        self.sync = False
        try:
            yield
        finally:
            self.sync = True

    def _on_grad(self, p):
        if not self.sync:  # accumulate locally; the next synced backward sends the sum
            return
        self.ready[self.bucket_of[p]] += 1
        while self.next < len(self.buckets) and self.ready[self.next] == len(self.buckets[self.next]):
            self._launch(self.next)
            self.next += 1

    def _launch(self, i):
        params = [p for p in self.buckets[i] if p.grad is not None]  # unused parameters stay out
        if params:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            self.pending.append((dist.all_reduce(flat, async_op=True), flat, params))

    @torch.no_grad()
    def finish_gradient_synchronization(self):
        """Launch what unused parameters held back, wait for every all-reduce, write the means back."""
        if self.sync:
            while self.next < len(self.buckets):
                self._launch(self.next)
                self.next += 1
        for work, flat, params in self.pending:
            work.wait()  # the all-reduce is asynchronous: its result exists only after wait()
            flat /= self.world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        self._reset()


# Exercise 5.4: global_token_mean_loss -----------------------------------------------------------
def global_token_mean_loss(logits, labels, ignore_index=IGNORE_INDEX):
    """This rank's summed loss x world size / every rank's labelled-token count."""
    rank, world = _require_group("global_token_mean_loss")
    count = (labels != ignore_index).sum().to(torch.int64)
    dist.all_reduce(count)  # the count over ALL ranks: dividing by our own count is the trap
    if count.item() == 0:
        raise ValueError("no labelled token on any rank: the token mean is 0/0")
    summed = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=ignore_index, reduction="sum")
    return summed * world / count  # x world: the gradients are then averaged over the ranks


# Exercise 5.5: ShardedOptimizer (ZeRO stage 1) --------------------------------------------------
class ShardedOptimizer(torch.optim.Optimizer):
    """Each rank keeps optimizer state only for the parameters it owns, steps them, broadcasts them."""

    def __init__(self, params, optimizer_cls, **kwargs):
        self.rank, self.world = _require_group("ShardedOptimizer")
        super().__init__(params, kwargs)  # every parameter: zero_grad and schedulers see them all
        every = [p for g in self.param_groups for p in g["params"]]
        # Whole parameters to ranks, largest first to the least-loaded rank: the same on every rank.
        load, self.owner = [0] * self.world, {}
        for p in sorted(every, key=lambda p: -p.numel()):
            r = load.index(min(load))
            self.owner[p] = r
            load[r] += p.numel()
        mine = [{**{k: v for k, v in g.items() if k != "params"},
                 "params": [p for p in g["params"] if self.owner[p] == self.rank]} for g in self.param_groups]
        self.inner = optimizer_cls(mine, **kwargs)
        self.state = self.inner.state  # this rank's shard only

    @torch.no_grad()
    def step(self, closure=None):
        for g, mine in zip(self.param_groups, self.inner.param_groups):
            mine.update({k: v for k, v in g.items() if k != "params"})  # e.g. a scheduler's new lr
        self.inner.step()  # the gradients are already the ranks' mean (DDP)
        for g in self.param_groups:
            for p in g["params"]:
                dist.broadcast(p, src=self.owner[p])  # the owner's updated values, to every rank

"""The rank side of Chapter 5's graders (efftrain_lib/grading/distributed.py): what each of the two
ranks runs for a check. Every function takes the graded file's path, loads it afresh (`load`) and
returns plain data; the check compares it with references computed here, in the ranks.

`Wire` watches torch.distributed.all_reduce and broadcast while a part runs: it records each call
(name, elements, asynchronous or not), and lets an asynchronous one land in its tensor only when its
handle's wait() is called (`Deferred`), the latest moment the API allows: code that reads a result
without waiting is caught every time, not only when gloo happens to be slow. The references' own
collectives go through torch.distributed.distributed_c10d directly, never through the watched names.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed import distributed_c10d

WORLD = 2  # the graders' group size
VOCAB, DIM, SEQ, ROWS = 11, 8, 6, 2
IGNORE = -100
_loads = itertools.count()

def load(path: str):
    name = f"_efftrain_graded_rank_{Path(path).stem}_{next(_loads)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Deferred:
    """An asynchronous collective whose result reaches its tensor at wait(), not before."""

    def __init__(self, wire, work, scratch, target):
        self.wire, self.work, self.scratch, self.target, self.done = wire, work, scratch, target, False
        wire.pending += 1

    def wait(self, *args, **kwargs):
        if not self.done:
            self.work.wait()
            with torch.no_grad():
                self.target.copy_(self.scratch)
            self.done = True
            self.wire.pending -= 1
        return True

    def is_completed(self) -> bool:
        return self.done

    def is_success(self) -> bool:
        return self.done

    def get_future(self):
        self.wait()
        future = torch.futures.Future()
        future.set_result([self.target])
        return future


class Wire:
    """Watches dist.all_reduce and dist.broadcast while active (see the module docstring)."""

    def __init__(self):
        self.calls: list[tuple[str, int, bool]] = []  # (name, numel, asynchronous)
        self.pending = 0  # asynchronous calls never waited on
        self.saved = {}

    def __enter__(self):
        for name in ("all_reduce", "broadcast"):
            self.saved[name] = getattr(dist, name)
            setattr(dist, name, self._wrap(name, self.saved[name]))
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(dist, name, original)

    def _wrap(self, name, original):
        def collective(tensor, *args, async_op=False, **kwargs):
            if not isinstance(tensor, torch.Tensor):  # let torch say what is wrong
                return original(tensor, *args, async_op=async_op, **kwargs)
            self.calls.append((name, tensor.numel(), bool(async_op)))
            if not async_op:
                return original(tensor, *args, **kwargs)
            scratch = tensor.detach().clone()
            return Deferred(self, original(scratch, *args, async_op=True, **kwargs), scratch, tensor)

        return collective

    def count(self, name="all_reduce") -> int:
        return sum(1 for c in self.calls if c[0] == name)


class Net(nn.Module):
    """Token-wise: Embedding -> Linear -> tanh -> (unused Linear) -> Linear, and a buffer."""

    def __init__(self, dim=DIM, unused=False):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.hidden = nn.Linear(dim, dim)
        self.unused = nn.Linear(dim, dim) if unused else None
        self.out = nn.Linear(dim, VOCAB)
        self.register_buffer("scale", torch.ones(dim))

    def forward(self, ids):
        return self.out(torch.tanh(self.hidden(self.embed(ids)) * self.scale))


def make_net(seed: int, **kwargs) -> Net:
    torch.manual_seed(seed)
    net = Net(**kwargs)
    with torch.no_grad():
        net.scale.uniform_(0.5, 1.5)
    return net


def rows(step: int, rank: int, lengths=None):
    """(ids, labels) of one rank at one step; lengths: labelled positions per row (-100 after)."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.randint(0, VOCAB, (ROWS, SEQ), generator=g)
    labels = torch.randint(0, VOCAB, (ROWS, SEQ), generator=g)
    for row, n in enumerate(lengths or ()):
        labels[row, n:] = IGNORE
    return ids, labels


def ce(logits, labels, reduction="mean"):
    return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=IGNORE, reduction=reduction)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).clone() for t in tensors])


def grads(model) -> list:
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def reference_mean(grads):
    """The mean over ranks, by the grader's own synchronous all-reduce (never the watched one)."""
    out = []
    for g in grads:
        g = g.clone()
        distributed_c10d.all_reduce(g)
        out.append(g / dist.get_world_size())
    return out


def broadcast(path, src):
    impl = load(path)
    rank = dist.get_rank()
    net = make_net(seed=10 + rank)
    before = [flat(list(net.parameters())), flat(list(net.buffers()))]
    impl.broadcast_parameters(net, src=src)
    return before, [flat(list(net.parameters())), flat(list(net.buffers()))]


def different_shapes(path):
    impl = load(path)
    rank = dist.get_rank()
    net = make_net(seed=0, dim=DIM + rank)  # rank 1's model is wider
    try:
        impl.broadcast_parameters(net)
    except ValueError as error:
        return "ValueError", str(error)
    return "no error", ""


def all_reduce(path):
    impl = load(path)
    rank = dist.get_rank()
    net = make_net(seed=0, unused=True)
    ids, labels = rows(0, rank)
    ce(net(ids), labels).backward()
    local = grads(net)
    with Wire() as wire:
        impl.all_reduce_gradients(net)
    got = grads(net)
    used = [i for i, g in enumerate(local) if g is not None]
    return {"none_kept": all(got[i] is None for i, g in enumerate(local) if g is None),
            "lost": any(got[i] is None for i in used),
            "got": flat([got[i] for i in used if got[i] is not None]),
            "mean": flat(reference_mean([local[i] for i in used])), "local": flat([local[i] for i in used]),
            "pending": wire.pending}


def train_sgd(path, steps=2):
    impl = load(path)
    rank = dist.get_rank()
    net = make_net(seed=20 + rank)
    ref = make_net(seed=20)  # rank 0's initial weights
    impl.broadcast_parameters(net)
    opt, ref_opt = torch.optim.SGD(net.parameters(), lr=0.5), torch.optim.SGD(ref.parameters(), lr=0.5)
    for step in range(steps):
        ids, labels = rows(step, rank)
        ce(net(ids), labels).backward()
        impl.all_reduce_gradients(net)
        opt.step()
        opt.zero_grad()
        everyone = [rows(step, r) for r in range(WORLD)]
        ce(ref(torch.cat([x for x, _ in everyone])), torch.cat([y for _, y in everyone])).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    return flat(list(net.parameters())), flat(list(ref.parameters()))


def ddp_one_backward(path, bucket_mb=None):
    """Construct OverlappedDDP (each rank from its own weights), one backward, finish: what happened."""
    impl = load(path)
    rank = dist.get_rank()
    net = make_net(seed=30 + rank)
    ids, labels = rows(1, rank)
    reference = make_net(seed=30)  # rank 0's weights: what every rank must hold after construction
    ce(reference(ids), labels).backward()
    local = [p.grad.clone() for p in reference.parameters()]
    with Wire() as wire:
        ddp = impl.OverlappedDDP(net, bucket_mb=bucket_mb)
        weights = flat(list(net.parameters()) + list(net.buffers()))
        seen = {}
        start = wire.count()
        first = next(net.parameters())  # its gradient comes last in backward
        def first_ready(param):  # a post-accumulate-grad hook returns None
            seen.setdefault("first", wire.count() - start)

        hook = first.register_post_accumulate_grad_hook(first_ready)
        ce(ddp(ids), labels).backward()
        during = wire.count() - start
        ddp.finish_gradient_synchronization()
        hook.remove()
    got = [p.grad for p in net.parameters()]
    return {"weights": weights, "want_weights": flat(list(reference.parameters()) + list(reference.buffers())),
            "got": flat(got) if all(g is not None for g in got) else None,
            "mean": flat(reference_mean(local)), "local": flat(local), "pending": wire.pending,
            "before_first_layer": seen.get("first", 0), "during": during, "total": wire.count() - start}


def bad_bucket_mb(path):
    impl = load(path)
    found = {}
    for bad in (0, -1.5):
        try:
            impl.OverlappedDDP(make_net(seed=0), bucket_mb=bad)
            found[bad] = "no error"
        except ValueError:
            found[bad] = "ValueError"
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - reported
            found[bad] = f"{type(error).__name__}: {str(error)[:60]}"
    return found


def bucket_net(seed):
    """Three weights of 6, 24 and 12 elements (registration order), no biases."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2, bias=False), nn.Tanh(), nn.Linear(2, 12, bias=False), nn.Tanh(),
                         nn.Linear(12, 1, bias=False))


BUCKET_MB = 36 * 4 / 2**20  # exactly the last two weights (12 + 24 elements): every filling rule agrees


def buckets(path):
    impl = load(path)
    rank = dist.get_rank()
    net, reference = bucket_net(40), bucket_net(40)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)
    F.mse_loss(reference(x), y).backward()
    local = [p.grad.clone() for p in reference.parameters()]
    with Wire() as wire:
        ddp = impl.OverlappedDDP(net, bucket_mb=BUCKET_MB)
        start = len(wire.calls)
        F.mse_loss(ddp(x), y).backward()
        ddp.finish_gradient_synchronization()
        sizes = [numel for name, numel, _ in wire.calls[start:] if name == "all_reduce"]
    return {"sizes": sizes, "got": flat([p.grad for p in net.parameters()]), "mean": flat(reference_mean(local)),
            "local": flat(local), "pending": wire.pending}


def no_sync(path):
    impl = load(path)
    rank = dist.get_rank()
    net = make_net(seed=60)
    (x1, y1), (x2, y2) = rows(2, rank), rows(3, rank)
    first, second = local_grads(x1, y1), local_grads(x2, y2)
    both = [a + b for a, b in zip(first, second)]
    with Wire() as wire:
        ddp = impl.OverlappedDDP(net)
        start = wire.count()
        with ddp.no_sync():
            ce(ddp(x1), y1).backward()
            ddp.finish_gradient_synchronization()  # a no-op after a backward under no_sync
        under = wire.count() - start
        ce(ddp(x2), y2).backward()
        ddp.finish_gradient_synchronization()
    got = [p.grad for p in net.parameters()]
    return {"under": under, "got": flat(got) if all(g is not None for g in got) else None,
            "mean": flat(reference_mean(both)), "local": flat(both), "pending": wire.pending,
            # what a hook that reads the gradient before accumulation gives: the first micro-batch's local
            # gradient plus the mean of the second's
            "early_read": flat([a + b for a, b in zip(first, reference_mean(second))])}


def local_grads(x, y):
    net = make_net(seed=60)
    ce(net(x), y).backward()
    return [p.grad.clone() for p in net.parameters()]


def unused_parameter(path):
    impl = load(path)
    rank = dist.get_rank()
    net, reference = make_net(seed=70, unused=True), make_net(seed=70, unused=True)
    ids, labels = rows(4, rank)
    ce(reference(ids), labels).backward()
    used = [i for i, p in enumerate(reference.parameters()) if p.grad is not None]
    local = [p.grad.clone() for p in reference.parameters() if p.grad is not None]
    with Wire() as wire:
        ddp = impl.OverlappedDDP(net, bucket_mb=1.0)  # one bucket holds everything, the unused layer too
        ce(ddp(ids), labels).backward()
        ddp.finish_gradient_synchronization()
    grads = [p.grad for p in net.parameters()]
    return {"unused_none": all(g is None for i, g in enumerate(grads) if i not in used),
            "got": flat([grads[i] for i in used]) if all(grads[i] is not None for i in used) else None,
            "mean": flat(reference_mean(local)), "local": flat(local), "pending": wire.pending,
            "sent": wire.count()}


def train_buckets(path, steps=2):
    impl = load(path)
    rank = dist.get_rank()
    ddp = impl.OverlappedDDP(make_net(seed=80 + rank), bucket_mb=200 * 4 / 2**20)
    reference = make_net(seed=80)
    opt, ref_opt = torch.optim.SGD(ddp.parameters(), lr=0.5), torch.optim.SGD(reference.parameters(), lr=0.5)
    for step in range(steps):
        micro = [rows(10 * step + k, rank) for k in range(2)]
        with ddp.no_sync():
            (ce(ddp(micro[0][0]), micro[0][1]) / 2).backward()
        (ce(ddp(micro[1][0]), micro[1][1]) / 2).backward()
        ddp.finish_gradient_synchronization()
        opt.step()
        opt.zero_grad()
        everyone = [rows(10 * step + k, r) for r in range(WORLD) for k in range(2)]
        ce(reference(torch.cat([x for x, _ in everyone])), torch.cat([y for _, y in everyone])).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    return flat(list(ddp.module.parameters()) if hasattr(ddp, "module") else list(ddp.parameters())), \
        flat(list(reference.parameters()))




# ---------------------------------------------------------------------- 5.4 global_token_mean_loss --
#: Labelled positions per row: rank 0 holds 1 token, rank 1 holds 11: per-rank means weigh them alike.
UNEQUAL = {0: (1, 0), 1: (6, 5)}


def token_mean(path, lengths=UNEQUAL):
    """The learner's loss on this rank's rows (unequal token counts), its value and the averaged gradient,
    beside the gradient of one process's token mean over every rank's rows and the classic wrong ones."""
    impl = load(path)
    rank = dist.get_rank()
    world = dist.get_world_size()
    mine = rows(5, rank, lengths[rank])
    everyone = [rows(5, r, lengths[r]) for r in range(world)]
    net = make_net(seed=90)
    logits = net(mine[0])
    loss = impl.global_token_mean_loss(logits, mine[1])
    value = loss.detach().item()
    loss.backward()
    got = flat(reference_mean([p.grad for p in net.parameters()]))
    counts = [int((y != IGNORE).sum()) for _, y in everyone]
    summed = ce(make_net(seed=90)(mine[0]), mine[1], "sum").item()

    def gradient(weight_of_rank):
        """The gradient of sum_r weight_of_rank(r) * CE_sum(rank r's rows)."""
        reference = make_net(seed=90)
        total = sum(ce(reference(x), y, "sum") * weight_of_rank(r) for r, (x, y) in enumerate(everyone))
        total.backward()
        return flat([p.grad for p in reference.parameters()])

    n = sum(counts)
    return {"value": value, "want_value": summed * world / n, "got": got,
            "want": gradient(lambda r: 1 / n),
            "per_rank": gradient(lambda r: 1 / (world * max(counts[r], 1))),
            "counts": counts}


def no_tokens(path):
    impl = load(path)
    ids, labels = rows(6, dist.get_rank(), (0, 0))
    try:
        loss = impl.global_token_mean_loss(make_net(seed=0)(ids), labels)
    except ValueError as error:
        return "ValueError", str(error)[:80]
    return "no error", f"returned {loss.detach().item()}"


# ------------------------------------------------------------------------- 5.5 ShardedOptimizer --
def sharded_steps(path, steps=3, lr_override=None):
    """The learner's ShardedOptimizer(AdamW) for `steps` steps on gradients the grader averages itself,
    beside torch.optim.AdamW on the same gradients; and which parameters this rank keeps state for."""
    impl = load(path)
    rank = dist.get_rank()
    net, reference = make_net(seed=100), make_net(seed=100)
    sizes = [p.numel() for p in net.parameters()]
    with Wire() as wire:
        opt = impl.ShardedOptimizer(net.parameters(), torch.optim.AdamW, lr=0.05, weight_decay=0.1)
        if lr_override is not None:
            for group in opt.param_groups:
                group["lr"] = lr_override  # as a scheduler would
        ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.05 if lr_override is None else lr_override,
                                    weight_decay=0.1)
        for step in range(steps):
            ids, labels = rows(20 + step, rank)
            ce(net(ids), labels).backward()
            mean = reference_mean([p.grad for p in net.parameters()])
            for p, g, q in zip(net.parameters(), mean, reference.parameters()):
                p.grad, q.grad = g.clone(), g.clone()
            opt.step()
            ref_opt.step()
            opt.zero_grad()
            ref_opt.zero_grad()
    index = {id(p): i for i, p in enumerate(net.parameters())}
    kept = sorted(index[id(p)] for p, state in opt.state.items() if state)
    return {"got": flat(list(net.parameters())), "want": flat(list(reference.parameters())),
            "start": flat(list(make_net(seed=100).parameters())), "kept": kept, "sizes": sizes,
            "pending": wire.pending}


def zero_grad_all(path):
    impl = load(path)
    net = make_net(seed=0)
    opt = impl.ShardedOptimizer(net.parameters(), torch.optim.AdamW, lr=0.01)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.zero_grad()
    return [p.grad is None or not bool(p.grad.any()) for p in net.parameters()]

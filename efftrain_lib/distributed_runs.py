"""Chapter 5's data-parallel experiments, as functions that every rank runs.

The notebook and benchmarks/distributed.py run them with efftrain_lib.launcher (spawn finds a function
by its module and name, so they live here, not in a notebook cell); each returns plain data (floats,
lists, dicts) that the launcher brings back, one result per rank. Every rank builds the same global
batch from a seed and takes its own rows, so a rank needs nothing but its rank to know its data, and
the one-process reference (the whole global batch in one step) can be computed anywhere.

    launch(distributed_runs.matches_one_process, 2, wrapper="overlapped")  # ours = one process
    launch(distributed_runs.token_count_trap, 2)                            # wrong, then fixed
    launch(distributed_runs.step_times, 2, rounds=10)                       # ours / DDP
    launch(distributed_runs.bytes_per_step, 2)                              # payload, wire, formula
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from .collectives import CollectiveLog, bytes_sent, ring_all_reduce_bytes
from .comparing import max_abs_diff
from .data import VOCAB_SIZE, batch_sampler, encode, load_text
from .data_parallel import OverlappedDDP, SynchronousDDP, global_token_normaliser, require_process_group
from .lora import apply_lora, lora_parameters
from .losses import IGNORE_INDEX, count_labelled
from .models import TinyConfig, TinyTransformer
from .timing import interleaved
from .training import training_step

__all__ = ["CONFIG", "TIMING_CONFIG", "WRAPPERS", "accumulation_with_and_without_no_sync", "bytes_per_step",
           "checkpointing_under_ddp", "global_batch", "local_rows", "lora_bytes", "make_model", "matches_one_process",
           "ours_vs_torch_ddp", "step_times", "token_count_trap"]

#: The model of the equalities: small enough that a few steps take milliseconds per rank.
CONFIG = TinyConfig(vocab_size=VOCAB_SIZE, hidden_size=32, n_layers=2, n_heads=2, ffn_dim=64, max_seq_len=32)
#: The model of the timings: enough gradient (~0.8 M parameters, 3 MiB) for communication to show.
TIMING_CONFIG = TinyConfig(vocab_size=VOCAB_SIZE, hidden_size=128, n_layers=4, n_heads=4, ffn_dim=344,
                           max_seq_len=64)
WRAPPERS = ("synchronous", "overlapped", "bucketed", "torch_ddp")
SEQ_LEN, PER_RANK = 16, 2


@functools.cache
def _tokens() -> torch.Tensor:
    return encode(load_text("sonnets"))


def global_batch(step: int, world_size: int, per_rank: int = PER_RANK, seq_len: int = SEQ_LEN, seed: int = 0,
                 unequal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of one step: per_rank rows for each rank, rank r's rows first to last.
    unequal: rank r keeps only the first 2 + 5r labels of each row (-100 after), so ranks hold different
    token counts (padding, packed documents), the case where averaging per-rank means goes wrong."""
    inputs, labels = batch_sampler(_tokens(), per_rank * world_size, seq_len, seed)(step)
    if unequal:
        labels = labels.clone()
        for rank in range(world_size):
            labels[rank * per_rank:(rank + 1) * per_rank, 2 + 5 * rank:] = IGNORE_INDEX
    return inputs, labels


def local_rows(batch, rank: int, world_size: int):
    """This rank's rows of a global batch (the ranks' shares are equal)."""
    inputs, labels = batch
    per_rank = inputs.shape[0] // world_size
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    return inputs[rows], labels[rows]


def make_model(config: TinyConfig = CONFIG, seed: int = 0) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(config)


def _wrap(model: nn.Module, wrapper: str, bucket_mb: float) -> nn.Module:
    if wrapper == "synchronous":
        return SynchronousDDP(model)
    if wrapper == "overlapped":
        return OverlappedDDP(model)
    if wrapper == "bucketed":
        return OverlappedDDP(model, bucket_mb=bucket_mb)
    if wrapper == "torch_ddp":
        return DistributedDataParallel(model, bucket_cap_mb=bucket_mb)
    raise ValueError(f"wrapper must be one of {WRAPPERS}, got {wrapper!r}")


def _params(model: nn.Module) -> list[torch.Tensor]:
    module = getattr(model, "module", model)
    return [p.detach().clone() for p in module.parameters()]


def _train(model, batches, normaliser=None, lr: float = 1e-2) -> list[float]:
    """AdamW steps through training.training_step, one window of micro-batches per step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return [training_step(model, optimizer, window, normaliser=normaliser).loss for window in batches]


def _windows(rank, world, steps, accumulation, unequal, seed=0):
    """This rank's windows (its rows split into `accumulation` micro-batches), and the one-process
    windows (the whole global batch of each step, one micro-batch)."""
    per_rank = PER_RANK * accumulation
    full = [global_batch(s, world, per_rank, seed=seed, unequal=unequal) for s in range(steps)]
    mine = []
    for batch in full:
        x, y = local_rows(batch, rank, world)
        mine.append([(x[i::accumulation], y[i::accumulation]) for i in range(accumulation)])
    return mine, [[batch] for batch in full]


def matches_one_process(wrapper: str = "overlapped", steps: int = 3, accumulation: int = 1,
                        bucket_mb: float = 0.05, unequal: bool = False, global_tokens: bool = True) -> dict:
    """Train data-parallel (`wrapper`: synchronous, overlapped, bucketed, torch_ddp) for `steps` AdamW steps
    and compare with one process on the concatenated batch: {"max_abs_diff", "losses", "tokens"}.
    Each rank starts from its own random weights: the wrapper broadcasts rank 0's."""
    rank, world = require_process_group("matches_one_process")
    mine, whole = _windows(rank, world, steps, accumulation, unequal)
    reference = make_model(seed=100)  # rank 0's initial weights
    _train(reference, whole)
    model = _wrap(make_model(seed=100 + rank), wrapper, bucket_mb)
    losses = _train(model, mine, normaliser=global_token_normaliser if global_tokens else None)
    return {"max_abs_diff": max_abs_diff(_params(model), _params(reference)), "losses": losses,
            "tokens": sum(count_labelled(y) for window in mine for _, y in window)}


def token_count_trap(steps: int = 3) -> dict:
    """Ranks with different token counts: each normalising by its own count (wrong), then by the
    all-reduced count (fixed); max |diff| of the parameters vs one process on the whole batch."""
    wrong = matches_one_process("overlapped", steps, unequal=True, global_tokens=False)
    fixed = matches_one_process("overlapped", steps, unequal=True, global_tokens=True)
    return {"tokens": wrong["tokens"], "wrong": wrong["max_abs_diff"], "fixed": fixed["max_abs_diff"]}


def ours_vs_torch_ddp(steps: int = 3, bucket_mb: float = 0.05) -> dict:
    """Parameters after `steps` steps: OverlappedDDP (buckets) vs DistributedDataParallel, max |diff|."""
    rank, world = require_process_group("ours_vs_torch_ddp")
    mine, _ = _windows(rank, world, steps, 1, False)
    ours = _wrap(make_model(seed=100 + rank), "bucketed", bucket_mb)
    theirs = _wrap(make_model(seed=100 + rank), "torch_ddp", bucket_mb)
    _train(ours, mine)
    _train(theirs, mine)
    return {"max_abs_diff": max_abs_diff(_params(ours), _params(theirs))}


def step_times(rounds: int = 10, bucket_mb: float = 1.0, wrappers=WRAPPERS, per_rank: int = 4,
               seq_len: int = 64) -> dict:
    """Median seconds per training step of each wrapper on TIMING_CONFIG, interleaved rounds (every rank
    runs the same order, so the collectives pair up), and ratios against torch_ddp."""
    rank, world = require_process_group("step_times")
    batch = local_rows(global_batch(0, world, per_rank, seq_len), rank, world)
    models = {w: _wrap(make_model(TIMING_CONFIG, seed=1), w, bucket_mb) for w in wrappers}
    optimizers = {w: torch.optim.AdamW(m.parameters(), lr=1e-4) for w, m in models.items()}
    runs = {w: functools.partial(training_step, models[w], optimizers[w], [batch]) for w in wrappers}
    timings = interleaved(runs, rounds=rounds, warmup=2,
                          reference="torch_ddp" if "torch_ddp" in wrappers else wrappers[0])
    return {"seconds": timings.seconds, "ratios": timings.ratios}


def bytes_per_step(bucket_mb: float = 1.0, wrappers=WRAPPERS) -> dict:
    """For each wrapper, one training step: the payload its collectives carried (counted by wrapping
    them; DDP's C++ reducer is not seen there), the bytes this process really wrote (the kernel's count),
    and the ring all-reduce formula 2(N-1)/N x gradient bytes."""
    rank, world = require_process_group("bytes_per_step")
    batch = local_rows(global_batch(0, world, PER_RANK, 64), rank, world)
    out = {}
    for wrapper in wrappers:
        model = _wrap(make_model(TIMING_CONFIG, seed=1), wrapper, bucket_mb)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        training_step(model, optimizer, [batch])  # warm-up: buckets and buffers exist
        gradient_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        dist.barrier()
        with CollectiveLog() as log:
            before = bytes_sent()
            training_step(model, optimizer, [batch])
            wire = bytes_sent() - before
        out[wrapper] = {"gradient_bytes": gradient_bytes, "payload": log.total("all_reduce"),
                        "collectives": log.count("all_reduce"), "wire": wire,
                        "formula": ring_all_reduce_bytes(gradient_bytes, world)}
    return out


def lora_bytes(rank_r: int = 4) -> dict:
    """LoRA under data parallelism: only the adapters' gradients travel. Bytes this process wrote in one
    step, full fine-tuning vs LoRA, beside the formula for each's trainable gradient."""
    rank, world = require_process_group("lora_bytes")
    batch = local_rows(global_batch(0, world, PER_RANK, 64), rank, world)
    out = {}
    for name in ("full", "lora"):
        model = make_model(TIMING_CONFIG, seed=1)
        if name == "lora":
            apply_lora(model, ["q_proj", "v_proj"], rank=rank_r, alpha=2 * rank_r)
        wrapped = OverlappedDDP(model, bucket_mb=1.0)
        trainable = lora_parameters(model) if name == "lora" else list(model.parameters())
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        training_step(wrapped, optimizer, [batch])
        dist.barrier()
        before = bytes_sent()
        training_step(wrapped, optimizer, [batch])
        wire = bytes_sent() - before
        gradient = sum(p.numel() * p.element_size() for p in trainable)
        out[name] = {"trainable": sum(p.numel() for p in trainable), "gradient_bytes": gradient,
                     "payload": wrapped.last_bytes, "wire": wire, "formula": ring_all_reduce_bytes(gradient, world)}
    return out


class _Checkpointed(nn.Module):
    """The tiny model with its decoder layers under gradient checkpointing (reentrant or not) and a
    frozen token embedding (as with LoRA), so the layers' input does not require grad."""

    def __init__(self, model: TinyTransformer, use_reentrant: bool):
        super().__init__()
        self.model = model
        self.use_reentrant = use_reentrant
        model.embed_tokens.weight.requires_grad_(False)
        model.embed_positions.weight.requires_grad_(False)

    def forward(self, ids):
        m = self.model
        x = m.embed_tokens(ids) + m.embed_positions(torch.arange(ids.shape[1]))
        for layer in m.layers:
            x = checkpoint(layer, x, use_reentrant=self.use_reentrant)
        return m.lm_head(m.norm(x))


def checkpointing_under_ddp(steps: int = 2) -> dict:
    """DistributedDataParallel with gradient checkpointing of every layer, frozen embeddings: for each
    mode, what torch warned, the error DDP raised (or None) and the max |diff| of the parameters vs one
    process."""
    rank, world = require_process_group("checkpointing_under_ddp")
    mine, whole = _windows(rank, world, steps, 1, False)
    reference = _Checkpointed(make_model(seed=100), use_reentrant=False)
    _train(reference, whole)
    out = {}
    for mode, reentrant in (("reentrant", True), ("non-reentrant", False)):
        model = DistributedDataParallel(_Checkpointed(make_model(seed=100 + rank), reentrant))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _train(model, mine)
                error, diff = None, max_abs_diff(_params(model), _params(reference))
            except RuntimeError as exc:
                error, diff = str(exc).splitlines()[0], None
        out[mode] = {"error": error, "max_abs_diff": diff,
                     "warnings": list(dict.fromkeys(str(w.message) for w in caught))}
    return out
class _AlwaysSync(nn.Module):
    """A data-parallel model seen without its no_sync(): training_step then syncs every micro-batch."""

    def __init__(self, ddp: nn.Module):
        super().__init__()
        self.ddp = ddp

    def forward(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)


def accumulation_with_and_without_no_sync(accumulation: int = 4, steps: int = 2) -> dict:
    """Windows of `accumulation` micro-batches through training_step, with OverlappedDDP's no_sync (what
    training_step uses when the model has one) and without it: all-reduce calls and payload per step,
    and max |diff| of the parameters vs one process (both are correct; one sends k times more)."""
    rank, world = require_process_group("accumulation_with_and_without_no_sync")
    mine, whole = _windows(rank, world, steps, accumulation, False)
    reference = make_model(seed=100)
    _train(reference, whole)
    out = {}
    for name in ("no_sync", "every micro-batch"):
        ddp = OverlappedDDP(make_model(seed=100 + rank))
        model = ddp if name == "no_sync" else _AlwaysSync(ddp)
        with CollectiveLog() as log:
            _train(model, mine, normaliser=global_token_normaliser)
        out[name] = {"all_reduces_per_step": log.count("all_reduce") / steps,
                     "payload_per_step": log.total("all_reduce") / steps,
                     "max_abs_diff": max_abs_diff(_params(ddp), _params(reference))}
    return out

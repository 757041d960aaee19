"""Train the tiny transformer data-parallel or sharded, launched for real from a terminal:

    torchrun --nproc-per-node 2 -m efftrain_lib.distributed_train --strategy ddp --steps 20
    torchrun --nproc-per-node 2 -m efftrain_lib.distributed_train --strategy fsdp --steps 20 --json

torchrun starts the ranks and sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; each rank joins the group
(gloo on CPU, nccl on GPUs), takes its rows of every global batch, and trains through the course's one
step, training.training_step, with the chosen strategy:

    ddp        efftrain_lib.data_parallel.OverlappedDDP (buckets of --bucket-mb MiB) + AdamW
    torch-ddp  torch.nn.parallel.DistributedDataParallel + AdamW
    zero1      OverlappedDDP + sharding.ShardedOptimizer(AdamW)
    zero2      sharding.ShardedGradientOptimizer(AdamW) on the plain model
    fsdp       sharding.fully_shard_blocks (FSDP2's fully_shard per decoder layer) + AdamW

Every step, rank 0 prints the global token-mean loss and each rank's loss and peak memory (the course's
meter, CPU accounting or the CUDA allocator); --json prints one JSON object per step instead (what the
notebook's live view reads). The same function, `train_tiny`, runs inside efftrain_lib.launcher's ranks.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .data_parallel import OverlappedDDP, broadcast_parameters, global_token_normaliser, require_process_group
from .distributed_runs import global_batch, local_rows, make_model
from .launcher import device_for_backend, init_from_environment
from .meter import MIB, MemoryMeter
from .models import TinyConfig
from .data import VOCAB_SIZE
from .sharding import ShardedGradientOptimizer, ShardedOptimizer, fully_shard_blocks
from .training import training_step

__all__ = ["STRATEGIES", "TRAIN_CONFIG", "main", "train_tiny"]

STRATEGIES = ("ddp", "torch-ddp", "zero1", "zero2", "fsdp")
TRAIN_CONFIG = TinyConfig(vocab_size=VOCAB_SIZE, hidden_size=64, n_layers=2, n_heads=4, ffn_dim=172, max_seq_len=64)


def _setup(strategy: str, model, lr: float, bucket_mb: float):
    if strategy == "ddp":
        return OverlappedDDP(model, bucket_mb=bucket_mb), torch.optim.AdamW(model.parameters(), lr=lr)
    if strategy == "torch-ddp":
        return DistributedDataParallel(model, bucket_cap_mb=bucket_mb), torch.optim.AdamW(model.parameters(), lr=lr)
    if strategy == "zero1":
        return OverlappedDDP(model, bucket_mb=bucket_mb), ShardedOptimizer(model.parameters(), torch.optim.AdamW, lr=lr)
    if strategy == "zero2":
        broadcast_parameters(model)
        return model, ShardedGradientOptimizer(model.parameters(), torch.optim.AdamW, lr=lr)
    if strategy == "fsdp":
        broadcast_parameters(model)
        return fully_shard_blocks(model), torch.optim.AdamW(model.parameters(), lr=lr)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def train_tiny(strategy: str = "ddp", steps: int = 20, per_rank: int = 4, seq_len: int = 64, lr: float = 3e-3,
               bucket_mb: float = 1.0, on_step=None) -> list[dict]:
    """Train TRAIN_CONFIG for `steps` steps with `strategy` in the current process group; returns one
    record per step on every rank: {"step", "loss" (the global token mean), "rank_losses", "peak_mib"
    (each rank's meter peak)}. on_step(record), if given, is called on rank 0 after each step."""
    rank, world = require_process_group("train_tiny")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    device = device_for_backend(rank=rank)
    model, optimizer = _setup(strategy, make_model(TRAIN_CONFIG, seed=rank).to(device), lr, bucket_mb)
    meter = MemoryMeter()
    records = []
    with warnings.catch_warnings():
        # fully_shard warns that the model returns a view (an in-place op on it would skip a hook); the
        # loss reads the logits out of place
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
        for step in range(steps):
            batch = local_rows(global_batch(step, world, per_rank, seq_len, seed=7), rank, world)
            loss = training_step(model, optimizer, [batch], meter=meter, normaliser=global_token_normaliser).loss
            mine = torch.tensor([loss, meter.last.peak_bytes / MIB], dtype=torch.float64, device=device)
            everyone = [torch.zeros_like(mine) for _ in range(world)]
            dist.all_gather(everyone, mine)
            losses = [float(t[0]) for t in everyone]
            record = {"step": step, "loss": sum(losses) / world, "rank_losses": losses,
                      "peak_mib": [float(t[1]) for t in everyone]}
            records.append(record)
            if on_step is not None and rank == 0:
                on_step(record)
    return records


def _print_record(record: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
        return
    losses = " ".join(f"{v:.3f}" for v in record["rank_losses"])
    peaks = " ".join(f"{v:.2f}" for v in record["peak_mib"])
    print(f"step {record['step']:3d}  loss {record['loss']:.4f}  per rank: loss {losses}  peak MiB {peaks}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m efftrain_lib.distributed_train",
                                     description="Train the tiny transformer on several processes.")
    parser.add_argument("--strategy", choices=STRATEGIES, default="ddp")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--per-rank", type=int, default=4, help="sequences per rank per step")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--bucket-mb", type=float, default=1.0, help="gradient bucket size in MiB (ddp, zero1)")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="default: nccl with GPUs, else gloo")
    parser.add_argument("--json", action="store_true", help="one JSON object per step (rank 0)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.per_rank < 1 or not 1 <= args.seq_len <= TRAIN_CONFIG.max_seq_len:
        parser.error(f"--steps and --per-rank must be >= 1 and --seq-len in [1, {TRAIN_CONFIG.max_seq_len}]")
    try:
        rank, world = init_from_environment(args.backend)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    try:
        if rank == 0 and not args.json:
            print(f"{world} ranks, backend {dist.get_backend()}, strategy {args.strategy}: "
                  f"{args.per_rank} x {args.seq_len} tokens per rank per step", flush=True)
        train_tiny(args.strategy, args.steps, args.per_rank, args.seq_len, args.lr, args.bucket_mb,
                   on_step=lambda record: _print_record(record, args.json))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

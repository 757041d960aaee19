"""Chapter 5's sharding experiments (ZeRO 1-2 from scratch, ZeRO-3 as fully_shard), as functions every
rank runs (see efftrain_lib.distributed_runs for how the notebook and the benchmark run them).

    launch(sharding_runs.zero_matches_unsharded, 2)       # stage 1, 2, ZeroRedundancyOptimizer = AdamW
    launch(sharding_runs.fsdp_collectives, 2)             # where fully_shard all-gathers, reduce-scatters
    launch(sharding_runs.memory_per_rank, 4, stage=2)     # the meter in every rank, beside the estimate
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from .collectives import CollectiveLog, bytes_sent
from .comparing import max_abs_diff
from .data import VOCAB_SIZE
from .data_parallel import OverlappedDDP, broadcast_parameters, require_process_group
from .distributed_runs import CONFIG, global_batch, local_rows, make_model
from .memory import estimate_training_memory
from .meter import MemoryMeter
from .models import TinyConfig
from .sharding import ShardedGradientOptimizer, ShardedOptimizer, fully_shard_blocks
from .training import training_step

__all__ = ["MEMORY_CONFIG", "STAGES", "fsdp_collectives", "fsdp_mixed_precision", "memory_per_rank",
           "zero_matches_unsharded"]

#: Parameter-dominated (3.2 M parameters, 16 tokens a rank): model states are ~99% of a step's memory,
#: so the ZeRO formulas, which count model states only, can be checked on the measured peak.
MEMORY_CONFIG = TinyConfig(vocab_size=VOCAB_SIZE, hidden_size=256, n_layers=4, n_heads=4, ffn_dim=688, max_seq_len=16)
STAGES = (0, 1, 2, 3)
LR = 1e-2


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _batches(rank: int, world: int, steps: int, config: TinyConfig = CONFIG, per_rank: int = 2):
    seq = min(16, config.max_seq_len)
    full = [global_batch(s, world, per_rank, seq) for s in range(steps)]
    return [local_rows(b, rank, world) for b in full], full


def _sharded_setup(stage: int, model, rank: int):
    """(model to train, optimizer) for a ZeRO stage: 0 DDP + AdamW, 1 DDP + ShardedOptimizer, 2 the plain
    model + ShardedGradientOptimizer, 3 fully_shard + AdamW (on the sharded parameters)."""
    if stage == 0:
        return OverlappedDDP(model), torch.optim.AdamW(model.parameters(), lr=LR)
    if stage == 1:
        return OverlappedDDP(model), ShardedOptimizer(model.parameters(), torch.optim.AdamW, lr=LR)
    if stage == 2:
        broadcast_parameters(model)
        return model, ShardedGradientOptimizer(model.parameters(), torch.optim.AdamW, lr=LR)
    if stage == 3:
        broadcast_parameters(model)  # fully_shard keeps each rank's slice of its own weights: make them equal
        fully_shard_blocks(model)
        return model, torch.optim.AdamW(model.parameters(), lr=LR)
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def _full_parameters(model) -> torch.Tensor:
    """Every parameter in full (fully_shard's DTensors gathered), flattened in model order."""
    return torch.cat([(p.full_tensor() if callable(getattr(p, "full_tensor", None)) else p).detach().reshape(-1)
                      for p in model.parameters()])


def zero_matches_unsharded(steps: int = 3) -> dict:
    """Parameters after `steps` AdamW steps, max |diff| against one process on the whole batch, for
    unsharded data parallelism, ZeRO-1 and ZeRO-2 from scratch, fully_shard (ZeRO-3) and PyTorch's
    ZeroRedundancyOptimizer; and the optimizer-state elements this rank keeps for each."""
    rank, world = require_process_group("zero_matches_unsharded")
    mine, whole = _batches(rank, world, steps)
    reference = make_model(seed=100)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=LR)
    for batch in whole:
        training_step(reference, optimizer, [batch])
    want = _flat(reference)
    out = {}
    for stage in STAGES:
        model, optimizer = _sharded_setup(stage, make_model(seed=100 + rank), rank)
        for batch in mine:
            training_step(model, optimizer, [batch])
        out[f"stage {stage}"] = {"max_abs_diff": max_abs_diff(_full_parameters(model), want),
                                 "state_elements": _state_elements(optimizer)}
    model = OverlappedDDP(make_model(seed=100 + rank))
    zero = _zero_redundancy_optimizer()(model.parameters(), optimizer_class=torch.optim.AdamW, lr=LR)
    for batch in mine:
        training_step(model, zero, [batch])
    out["ZeroRedundancyOptimizer"] = {"max_abs_diff": max_abs_diff(_flat(model.module), want),
                                      "state_elements": _state_elements(zero.optim)}
    return out


def _zero_redundancy_optimizer():
    """torch.distributed.optim.ZeroRedundancyOptimizer, imported on use: importing the package scripts its
    functional optimizers with torch.jit, which warns (deprecated) 66 times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.distributed.optim import ZeroRedundancyOptimizer
    return ZeroRedundancyOptimizer


def _state_elements(optimizer) -> int:
    """Elements of this rank's Adam moments (exp_avg), i.e. the parameters it keeps state for."""
    total = 0
    for state in optimizer.state.values():
        moment = state.get("exp_avg")
        if moment is not None:
            total += (moment.to_local() if callable(getattr(moment, "to_local", None)) else moment).numel()
    return total


def fsdp_collectives(config: TinyConfig = CONFIG) -> dict:
    """One fully_shard training step with every collective logged: which kind ran in which phase
    (forward/backward of which block), with payloads; and the bytes this process wrote."""
    rank, world = require_process_group("fsdp_collectives")
    (batch,), _ = _batches(rank, world, 1, config)
    model, optimizer = _sharded_setup(3, make_model(config, seed=100), rank)
    training_step(model, optimizer, [batch])  # warm-up
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # global sizes
    dist.barrier()
    with CollectiveLog() as log:
        log.watch(model)
        before = bytes_sent()
        training_step(model, optimizer, [batch])
        wire = bytes_sent() - before
    return {"summary": log.summary(), "all_gather": log.total("all_gather"),
            "reduce_scatter": log.total("reduce_scatter"), "parameter_bytes": parameter_bytes, "wire": wire}


def memory_per_rank(stage: int, config: TinyConfig = MEMORY_CONFIG, per_rank: int = 1) -> dict:
    """The meter's peak breakdown (bytes, CPU accounting) of a steady-state step on this rank, for one
    ZeRO stage, beside the estimator's per-device prediction for the same model, batch and stage."""
    rank, world = require_process_group("memory_per_rank")
    batches, _ = _batches(rank, world, 2, config, per_rank)
    model, optimizer = _sharded_setup(stage, make_model(config, seed=100 + rank), rank)
    meter = MemoryMeter()
    for batch in batches:  # the second step is the steady state: Adam's moments exist
        training_step(model, optimizer, [batch], meter=meter)
    measured = meter.last.peak.as_dict()
    estimate = estimate_training_memory(config, batch_size=per_rank, seq_len=batches[0][0].shape[1],
                                        optimizer="adamw", devices=world, sharding_stage=stage)
    return {"measured": measured, "predicted": estimate.as_dict(), "phase": meter.last.peak_phase
            if hasattr(meter.last, "peak_phase") else None}


def fsdp_mixed_precision(config: TinyConfig = CONFIG, steps: int = 3) -> dict:
    """fully_shard with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) vs fp32: the bytes its
    all-gathers carry (half: parameters travel in bf16) and the loss after `steps` steps of each."""
    rank, world = require_process_group("fsdp_mixed_precision")
    mine, _ = _batches(rank, world, steps)
    out = {}
    for name, dtype in (("fp32", None), ("bf16 params, fp32 reduce", torch.bfloat16)):
        model = make_model(seed=100)
        fully_shard_blocks(model, param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        with warnings.catch_warnings(), CollectiveLog() as log:
            warnings.simplefilter("ignore")
            losses = [training_step(model, optimizer, [batch]).loss for batch in mine]
        out[name] = {"losses": losses, "all_gather_bytes": log.total("all_gather") / steps,
                     "reduce_scatter_bytes": log.total("reduce_scatter") / steps}
    return out

"""Run a plan: the tiny model trained with every technique the plan turns on, measured against its prediction.

    run = run_plan(plan, steps=10, budget_bytes=2 * 2**20)                   # one process
    runs = run_in_group(shared_group(2), plan, steps=10, budget_bytes=...,    # one per rank (the launcher),
                        on_record=dashboard.update)                          # rank 0's records live

`build` turns a planner.Plan into a model and an optimizer with the library's own pieces, in this order:
the pretrained tiny transformer, in bf16 when the plan says "bf16"; LoRA (`lora.apply_lora`) or QLoRA's
4-bit base under LoRA (`qlora.apply_qlora`, NF4 with double quantization, only the targets adapted);
the first n decoder layers checkpointed (`checkpointing.enable_checkpointing`, torch's reentrant
checkpoint, so that the meter's saved-tensor hooks see the recomputation the estimator counts; the
layers' input is made to require grad, as Hugging Face does under LoRA); then, on several ranks, rank 0's
weights broadcast and the ZeRO stage: 0 and 1 average the gradients once per window, right before the
step (`data_parallel.all_reduce_gradients` in a step pre-hook; stage 1 with `sharding.ShardedOptimizer`),
2 `sharding.ShardedGradientOptimizer`, 3 `sharding.fully_shard_blocks`. Not `OverlappedDDP`: its wait at
the end of backward is queued by the first gradient, which under a reentrant checkpoint can come from the
checkpoint's nested backward (chapter 5's known limit). AdamW runs its foreach implementation, the
estimator's default.

`run_plan` trains through the one step (`training.training_step`, bf16 autocast for "bf16_autocast", the
global token mean across ranks) under the course's meter in every rank, and reports per step and per
rank. Two measured figures per device, each beside the prediction it is comparable with:

* the meter's peak (CPU: accounting of held tensors; CUDA: the allocator's max_memory_allocated) and the
  estimator's `peak_bytes` (what accounting sees) on CPU, its `allocator_peak` on CUDA;
* on CPU, the allocator's own peak of one step (`meter.profiler_peak_bytes`, torch.profiler, plus what
  was resident before the step) and the estimator's `allocator_peak`.

The budget is watched with the meter: a step whose measured peak exceeds it stops the run with
`BudgetExceeded`, naming the step and the meter's phase at the peak ("backward 2", "optimizer step"). On
several ranks every rank sees every rank's peak (all_gather), so all of them stop together.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from efftrain_lib import data
from efftrain_lib.checkpointing import enable_checkpointing
from efftrain_lib.comparing import max_abs_diff
from efftrain_lib.data_parallel import all_reduce_gradients, broadcast_parameters, global_token_normaliser
from efftrain_lib.devices import get_device
from efftrain_lib.launcher import device_for_backend
from efftrain_lib.lora import apply_lora
from efftrain_lib.meter import MemoryMeter, buffer_bytes, optimizer_state_bytes, parameter_bytes, profiler_peak_bytes
from efftrain_lib.models import TinyConfig, load_pretrained
from efftrain_lib.planner import Plan, StepCosts, estimate_plan, format_bytes
from efftrain_lib.qlora import apply_qlora
from efftrain_lib.timing import interleaved
from efftrain_lib.sharding import ShardedGradientOptimizer, ShardedOptimizer, fully_shard_blocks
from efftrain_lib.training import trainable_parameters, training_step

__all__ = ["BudgetExceeded", "PlanRun", "build", "gradient_equality", "loss_curves", "run_in_group", "run_plan",
           "measure_step_costs", "tiny_config", "window"]

LR = 1e-3
CHECKPOINT_IMPL = "torch-reentrant"  # the meter sees the recomputation (saved-tensor hooks)
TEXT = "founding_documents"  # the fine-tuning target of every chapter


@functools.cache
def tiny_config() -> TinyConfig:
    """The configuration of the pretrained tiny transformer: the model every plan here runs on."""
    return load_pretrained().config


class BudgetExceeded(RuntimeError):
    """A step's measured peak went over the budget; the run stopped there (nothing is swapped out)."""


# ----------------------------------------------------------------------------------------------
# Building a plan
# ----------------------------------------------------------------------------------------------


def _optimizer_class(name: str):
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(name, torch.optim.SGD)


def _optimizer_options(name: str, lr: float) -> dict:
    options = {"lr": lr, "foreach": True}  # the estimator's optimizer_impl="foreach"
    if name.startswith("sgd"):
        options["momentum"] = 0.9 if name == "sgd_momentum" else 0.0
    return options


def build(plan: Plan, *, seed: int = 0, lr: float = LR):
    """(model, optimizer, autocast_dtype) for `plan` on the tiny transformer (see the module docstring).
    With plan.devices > 1 it must run inside a process group of that many ranks."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world != plan.devices:
        raise ValueError(f"the plan runs on {plan.devices} device(s) but this process group has {world} rank(s): "
                         + ("start them with efftrain_lib.launcher or torchrun" if plan.devices > 1 else
                            "plan for the ranks you have (devices=world size)"))
    device = device_for_backend() if world > 1 else get_device()
    torch.manual_seed(seed)
    model = load_pretrained()
    if plan.precision == "bf16":
        model.to(torch.bfloat16)  # before the adapters: LoRA's A and B take the base's dtype
    if plan.lora_rank is not None:
        targets, alpha = list(plan.lora_targets), 2.0 * plan.lora_rank
        if plan.base_format == "same":
            apply_lora(model, targets, plan.lora_rank, alpha)
        else:
            apply_qlora(model, plan.lora_rank, alpha, targets)
    if plan.checkpointed_layers:
        enable_checkpointing(model, layers=list(range(plan.checkpointed_layers)), impl=CHECKPOINT_IMPL,
                             input_requires_grad=True)
    model.to(device)
    cls, options = _optimizer_class(plan.optimizer), _optimizer_options(plan.optimizer, lr)
    if world == 1:
        return model, cls(trainable_parameters(model), **options), _autocast_dtype(plan)
    broadcast_parameters(model)  # every rank starts from rank 0's weights
    if plan.sharding_stage == 3:
        model = fully_shard_blocks(model, list(model.layers.children()))  # the layers, whatever wraps them
    params = trainable_parameters(model)
    if plan.sharding_stage == 2:
        optimizer = ShardedGradientOptimizer(params, cls, **options)
    else:
        optimizer = ShardedOptimizer(params, cls, **options) if plan.sharding_stage == 1 else cls(params, **options)
    if plan.sharding_stage in (0, 1):
        # The gradients' mean over ranks, once per window, right before the step. Not OverlappedDDP: its
        # wait is queued by the first gradient of a backward, and under a reentrant checkpoint that
        # gradient can arrive in the checkpoint's nested backward, which would end the wait too early.
        optimizer.register_step_pre_hook(lambda *_: all_reduce_gradients(model))
    return model, optimizer, _autocast_dtype(plan)


def _autocast_dtype(plan: Plan):
    return torch.bfloat16 if plan.precision == "bf16_autocast" else None


def window(plan: Plan, step: int, rank: int = 0, *, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches of the step's global batch (effective_batch windows of the fine-tuning text,
    rank r's rows r * per_device_batch onwards)."""
    tokens = _train_tokens()
    inputs, labels = data.batch_sampler(tokens, plan.effective_batch, plan.seq_len, seed)(step)
    rows = slice(rank * plan.per_device_batch, (rank + 1) * plan.per_device_batch)
    inputs, labels = inputs[rows], labels[rows]
    return list(zip(inputs.split(plan.micro_batch_size), labels.split(plan.micro_batch_size)))


_TOKENS: dict[str, torch.Tensor] = {}


def _train_tokens() -> torch.Tensor:
    if TEXT not in _TOKENS:
        _TOKENS[TEXT] = data.split_tokens(data.encode(data.load_text(TEXT)))[0]
    return _TOKENS[TEXT]


# ----------------------------------------------------------------------------------------------
# Running a plan
# ----------------------------------------------------------------------------------------------


@dataclass
class PlanRun:
    """What one rank measured. Bytes throughout; `records` is rank 0's view of every step (all ranks)."""

    rank: int
    plan: Plan
    records: list[dict] = field(default_factory=list)
    meter_peak: int = 0  # the largest meter peak of any step, this rank
    meter_phase: str = ""  # the meter's phase at that peak
    meter_source: str = ""
    breakdown: dict = field(default_factory=dict)  # the meter's categories at that peak
    allocator_peak: int | None = None  # CPU: resident + torch.profiler's peak of the profiled step
    predicted_peak: int = 0  # the estimator's figure comparable with meter_peak (see the module docstring)
    predicted_allocator: int = 0  # the estimator's allocator_peak
    seconds: float = 0.0

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records]


def _peak_phase(record) -> str:
    peak = max(record.timeline(), key=lambda event: event.total_bytes)
    return peak.phase


def _gather(values: list[float], world: int, device) -> list[list[float]]:
    """Every rank's `values` (one list per rank), in rank order."""
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    if world == 1:
        return [values]
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    return [t.tolist() for t in everyone]


def run_plan(plan: Plan, *, steps: int, budget_bytes: float | None = None, profile_step: int | None = 1,
             lr: float = LR, seed: int = 0, on_record: Callable[[dict], None] | None = None) -> PlanRun:
    """Train the tiny model under `plan` for `steps` optimizer steps in this process (or in each rank of a
    process group of plan.devices ranks); returns this rank's PlanRun. `profile_step`: the step measured
    under torch.profiler as well (CPU only; None: none). on_record(record) is called on rank 0 after
    every step with {"step", "steps", "loss", "peak_bytes" (per rank), "phase" (per rank), "allocator_bytes"
    (per rank on the profiled step, else None), "tokens_per_s", "seconds", "elapsed"}. BudgetExceeded as soon
    as a step's measured peak exceeds `budget_bytes`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    model, optimizer, autocast_dtype = build(plan, seed=seed, lr=lr)
    world = plan.devices
    rank = dist.get_rank() if world > 1 else 0
    device = next(p.device for p in model.parameters())
    estimate = estimate_plan(plan, tiny_config())
    meter = MemoryMeter()
    run = PlanRun(rank, plan, predicted_allocator=estimate.allocator_peak)
    run.predicted_peak = estimate.peak_bytes if device.type == "cpu" else estimate.allocator_peak
    normaliser = global_token_normaliser if world > 1 else None
    tokens_per_step = plan.effective_batch * plan.seq_len
    start = time.perf_counter()
    for step in range(steps):
        micro_batches = window(plan, step, rank, seed=seed)

        def one_step():
            return training_step(model, optimizer, micro_batches, autocast_dtype=autocast_dtype, meter=meter,
                                 normaliser=normaliser).loss

        began = time.perf_counter()
        allocator = 0
        if step == profile_step and device.type == "cpu":
            resident = parameter_bytes(model) + buffer_bytes(model) + optimizer_state_bytes(optimizer)
            holder = []
            profiled = profiler_peak_bytes(lambda: holder.append(one_step()))
            loss, allocator = holder[0], resident + profiled.peak_bytes
            run.allocator_peak = allocator
        else:
            loss = one_step()
        seconds = time.perf_counter() - began
        record = meter.last
        phase = _peak_phase(record)
        if record.peak_bytes > run.meter_peak:
            run.meter_peak, run.meter_phase = record.peak_bytes, phase
            run.breakdown = record.peak.as_dict()
            run.meter_source = record.source
        gathered = _gather([loss, record.peak_bytes, seconds, allocator], world, device)
        phases = [phase] if world == 1 else _all_phases(phase, world)
        entry = {"step": step, "steps": steps, "loss": sum(g[0] for g in gathered) / world,
                 "peak_bytes": [int(g[1]) for g in gathered], "phase": phases,
                 "seconds": max(g[2] for g in gathered),
                 "allocator_bytes": [int(g[3]) for g in gathered] if allocator else None}
        entry["tokens_per_s"] = tokens_per_step / entry["seconds"]
        entry["elapsed"] = time.perf_counter() - start
        run.records.append(entry)
        if rank == 0 and on_record is not None:
            on_record(entry)
        if budget_bytes is not None:
            _check_budget(entry, budget_bytes)
    run.seconds = time.perf_counter() - start
    return run


def _all_phases(phase: str, world: int) -> list[str]:
    phases = [None] * world
    dist.all_gather_object(phases, phase)
    return phases


def _check_budget(entry: dict, budget: float) -> None:
    over = [(r, peak) for r, peak in enumerate(entry["peak_bytes"]) if peak > budget]
    if over:
        rank, peak = over[0]
        where = f" on rank {rank}" if len(entry["peak_bytes"]) > 1 else ""
        raise BudgetExceeded(
            f"step {entry['step']} went over the budget{where}: the meter measured {format_bytes(peak)} at "
            f"'{entry['phase'][rank]}' > budget {format_bytes(budget)}. Stopped (nothing was swapped out); "
            "plan again for this budget, or raise it")


# ----------------------------------------------------------------------------------------------
# Several ranks from a notebook, rank 0's records live
# ----------------------------------------------------------------------------------------------


def _run_writing(plan: Plan, path: str, **options) -> PlanRun:
    """run_plan in a rank; rank 0 appends each record to `path` as a JSON line (the parent reads it)."""
    with open(path, "a", encoding="utf-8") as out:
        def write(record):
            out.write(json.dumps(record) + "\n")
            out.flush()

        return run_plan(plan, on_record=write, **options)


def run_in_group(group, plan: Plan, *, on_record: Callable[[dict], None] | None = None, timeout_s: float = 120.0,
                 **options) -> list[PlanRun]:
    """run_plan(plan, **options) in every rank of `group` (an efftrain_lib.launcher.WorkerGroup with
    plan.devices ranks); returns every rank's PlanRun. on_record is called here, in this thread, with rank
    0's records as they arrive (the group runs in a helper thread; its errors are re-raised here)."""
    if group.world_size != plan.devices:
        raise ValueError(f"the plan runs on {plan.devices} device(s); the group has {group.world_size} rank(s)")
    group.start()
    handle, path = tempfile.mkstemp(prefix="efftrain-plan-", suffix=".jsonl")
    os.close(handle)
    outcome: dict = {}

    def target():
        try:
            outcome["runs"] = group.run(_run_writing, plan, path, timeout_s=timeout_s, **options)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=target, name="efftrain-plan-run", daemon=True)
    try:
        worker.start()
        seen = 0
        while True:
            finished = not worker.is_alive()
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            complete = lines if finished else lines[:-1]  # the last line may still be written
            for line in complete[seen:]:
                if on_record is not None:
                    on_record(json.loads(line))
            seen = max(seen, len(complete))
            if finished:
                break
            worker.join(0.2)
    except BaseException:
        group.close()  # Ctrl-C or a failing callback: no rank is left running
        raise
    finally:
        os.unlink(path)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["runs"]


# ----------------------------------------------------------------------------------------------
# The combination is still right
# ----------------------------------------------------------------------------------------------


class _GradientRecorder(torch.optim.Optimizer):
    """An optimizer that keeps a copy of the gradients it is asked to apply and changes nothing."""

    def __init__(self, params):
        super().__init__(list(params), {})
        self.applied: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.applied.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])


def _adapted(plan: Plan, seed: int):
    """The plan's model with its adapters' B set to seeded random values (B = 0 would make A's gradient 0)."""
    model, _, autocast_dtype = build(plan, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=generator).to(p.dtype) * 0.05)
    return model, autocast_dtype


def gradient_equality(plan: Plan, *, seed: int = 0) -> dict:
    """The gradient `plan` applies in one step (its checkpointing, accumulation, LoRA, precision) against
    the plain model with the same adapter on the whole per-device batch at once, in one process. Returns
    {"max_abs_diff", "largest" (the largest reference gradient entry), "tensors"}."""
    if plan.devices != 1:
        raise ValueError("gradient_equality compares one process's step: pass a plan with devices=1")
    reference = replace(plan, micro_batch_size=plan.per_device_batch, accumulation_steps=1, checkpointed_layers=0)
    grads = []
    for p in (plan, reference):
        model, autocast_dtype = _adapted(p, seed)
        recorder = _GradientRecorder(trainable_parameters(model))
        training_step(model, recorder, window(p, 0, seed=seed), autocast_dtype=autocast_dtype)
        grads.append(recorder.applied[0])
    ours, ref = grads
    return {"max_abs_diff": max(max_abs_diff(a, b) for a, b in zip(ours, ref)),
            "largest": max(r.abs().max().item() for r in ref), "tensors": len(ref)}


def loss_curves(plan: Plan, *, steps: int, seed: int = 0) -> dict[str, list[float]]:
    """The plan's loss per step beside the same plan in fp32 (one process), for the band the notebook states."""
    mixed = replace(plan, devices=1, sharding_stage=0)
    fp32 = replace(mixed, precision="fp32")
    return {"fp32": run_plan(fp32, steps=steps, profile_step=None, seed=seed).losses,
            plan.precision: run_plan(mixed, steps=steps, profile_step=None, seed=seed).losses}


# ----------------------------------------------------------------------------------------------
# The step-time model's costs, measured here
# ----------------------------------------------------------------------------------------------


def _timed_step(plan: Plan):
    model, optimizer, autocast_dtype = build(plan)
    micro_batches = window(plan, 0)
    return lambda: training_step(model, optimizer, micro_batches, autocast_dtype=autocast_dtype)


def measure_step_costs(*, seq_len: int = 64, per_device_batch: int = 8, rounds: int = 5) -> tuple[StepCosts, dict]:
    """This machine's StepCosts, from interleaved timings of the tiny model (one process): the mixed-precision
    speedup (fp32 / bf16-autocast full fine-tuning), the 4-bit base's overhead (QLoRA minus LoRA, bf16, as a
    fraction of the plain step: one micro-batch's dequantization), the cost of each extra micro-batch
    (per_device_batch micro-batches of 1 against one batch, as a fraction of the plain step). Communication is not measured here (one process): the assumed share is kept.
    Returns (costs, {plan label: (plan, measured seconds / plain seconds)}) for the plans it timed, which
    include checkpointing and LoRA alone, to set the FLOP model's predictions beside measurements."""
    plain = Plan(seq_len, per_device_batch)
    lora = Plan(seq_len, per_device_batch, precision="bf16", lora_rank=8)
    plans = {"plain": plain, "mixed precision": replace(plain, precision="bf16_autocast"),
             "checkpointing (every layer)": replace(plain, checkpointed_layers=tiny_config().n_layers),
             f"accumulation ({per_device_batch} x 1)": replace(plain, micro_batch_size=1,
                                                              accumulation_steps=per_device_batch),
             "LoRA": replace(plain, lora_rank=8), "LoRA, bf16 model": lora,
             "LoRA, bf16, 4-bit base": replace(lora, base_format="nf4_dq")}
    timings = interleaved({label: _timed_step(plan) for label, plan in plans.items()}, rounds=rounds, warmup=1)
    ratio = timings.ratios
    accumulation = ratio[f"accumulation ({per_device_batch} x 1)"]
    costs = StepCosts(
        mixed_precision_speedup=1 / ratio["mixed precision"],
        dequantize_overhead=max(0.0, ratio["LoRA, bf16, 4-bit base"] - ratio["LoRA, bf16 model"]),
        micro_batch_overhead=max(0.0, (accumulation - 1) / (per_device_batch - 1)),
        source=f"measured on this machine's CPU (tiny model, {rounds} interleaved rounds); communication assumed")
    return costs, {label: (plan, ratio[label]) for label, plan in plans.items()}

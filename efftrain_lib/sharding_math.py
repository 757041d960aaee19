"""ZeRO's arithmetic: how much of the model states each of N devices keeps, by sharding stage.

Rajbhandari et al. 2020 (ZeRO, arXiv 1910.02054), mixed-precision Adam, Psi parameters, N devices
(K = 12: the fp32 master copy, m and v):

    stage 0 (plain data parallelism)     (2 + 2 + K) Psi            = 16 Psi
    stage 1 (optimizer state sharded)    (2 + 2) Psi + K Psi / N
    stage 2 (+ gradients)                2 Psi + (2 + K) Psi / N
    stage 3 (+ parameters; FSDP)         (2 + 2 + K) Psi / N

The paper's example, 7.5B parameters on N = 64: 120 GB -> 31.4 -> 16.6 -> 1.9 GB per device. In fp32
(4 + 4 + 8 bytes) the same shape holds with other numbers. Communication per step, in parameter-sized
volumes: data parallelism and stages 1-2 move 2 Psi (an all-reduce is a reduce-scatter plus an
all-gather); stage 3 moves 3 Psi (parameters all-gathered for forward and again for backward, gradients
reduce-scattered): 1.5x.

The estimator (memory.estimate_training_memory(devices=, sharding_stage=)) applies `shard_fractions`
to the categories it replays, so activations (never sharded here: every rank runs its own micro-batch)
and the peak's timing stay its own.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["STAGES", "STAGE_NAMES", "ShardFractions", "check_sharding", "communication_volume", "shard_bytes",
           "shard_fractions", "shard_model_states", "zero_bytes_per_parameter"]

STAGES = (0, 1, 2, 3)
STAGE_NAMES = {0: "no sharding (DDP)", 1: "ZeRO-1: optimizer state", 2: "ZeRO-2: + gradients",
               3: "ZeRO-3 / FSDP: + parameters"}


class ShardFractions(NamedTuple):
    """What each model-state category is divided by on one device (1: kept whole)."""

    weights: int
    gradients: int
    optimizer_state: int


def check_sharding(devices, sharding_stage) -> tuple[int, int]:
    """(devices, stage), or ValueError saying what is allowed."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be an integer >= 1 (data-parallel ranks), got {devices!r}")
    if isinstance(sharding_stage, bool) or sharding_stage not in STAGES:
        raise ValueError(f"sharding_stage must be one of {STAGES} (0 none, 1 optimizer state, 2 + gradients, "
                         f"3 + parameters), got {sharding_stage!r}")
    return devices, sharding_stage


def shard_fractions(sharding_stage: int, devices: int) -> ShardFractions:
    """The divisor of weights, gradients and optimizer state at this stage on `devices` devices."""
    devices, stage = check_sharding(devices, sharding_stage)
    n = devices
    return ShardFractions(n if stage >= 3 else 1, n if stage >= 2 else 1, n if stage >= 1 else 1)


def shard_bytes(nbytes: int, divisor: int) -> int:
    """One device's share of `nbytes` split `divisor` ways, rounded up (shards are padded to equal size)."""
    return -(-int(nbytes) // divisor)


def shard_model_states(weights: int, grad_bytes: dict, optimizer_state: int, devices: int,
                       sharding_stage: int) -> tuple[int, dict, int]:
    """One device's (weights, gradient bytes by parameter, optimizer state) at this stage: the sharded
    categories divided by `devices`, rounded up. Stage 0 or one device returns them unchanged."""
    f = shard_fractions(sharding_stage, devices)
    return (shard_bytes(weights, f.weights), {k: shard_bytes(v, f.gradients) for k, v in grad_bytes.items()},
            shard_bytes(optimizer_state, f.optimizer_state))


def zero_bytes_per_parameter(sharding_stage: int, devices: int, *, weight_bytes: float = 2,
                             grad_bytes: float = 2, optimizer_bytes: float = 12) -> float:
    """Model-state bytes per parameter on one device (the paper's 2 + 2 + K with K = 12 by default;
    fp32 Adam is weight_bytes=4, grad_bytes=4, optimizer_bytes=8)."""
    f = shard_fractions(sharding_stage, devices)
    return weight_bytes / f.weights + grad_bytes / f.gradients + optimizer_bytes / f.optimizer_state


def communication_volume(sharding_stage: int) -> float:
    """Elements sent per parameter per step, in units of the parameter count (the paper's Psi): 2 for
    data parallelism and stages 1-2, 3 for stage 3."""
    check_sharding(1, sharding_stage)
    return 3.0 if sharding_stage == 3 else 2.0

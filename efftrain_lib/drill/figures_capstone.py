"""The figures of chapter 7 (the capstone: a plan's memory and step time): see
efftrain_lib/drill/figures_registry.py."""

from __future__ import annotations

import math

from efftrain_lib.drill.figures_memory_lora import states_gb
from efftrain_lib.drill.figures_registry import COMPUTED, GB, GIB, MIB, figure, typed_in_other_unit
from efftrain_lib.memory import PRESETS
from efftrain_lib.memory_advisor import time_factor
from efftrain_lib.planner import parse_budget
from efftrain_lib.sharding_math import zero_bytes_per_parameter

LLAMA2_7B = PRESETS["Llama-2-7B"].num_parameters()
BUDGET_24GB = 24 * GB


@figure("capstone-7b-full-finetune-model-states", COMPUTED, """Llama-2-7B's parameters (memory.PRESETS) x
        memory.bytes_per_parameter('fp32', 'adam') (4 + 4 + 8), in GB""")
def _capstone_7b_states():
    gb = states_gb(LLAMA2_7B, "fp32", "adam")
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB),
                "Adam's m and v forgotten (weights and gradients only)": LLAMA2_7B * 8 / GB,
                "the 7e9 of the name instead of the 6.74e9 parameters": states_gb(7e9, "fp32", "adam"),
                "autocast's 18 bytes (a bf16 weight copy) for fp32 Adam": LLAMA2_7B * 18 / GB}


def _zero3_devices(bytes_per_param_at, budget: float = BUDGET_24GB) -> int:
    """The fewest devices N whose per-device model states, bytes_per_param_at(N) x parameters, fit."""
    return next(n for n in range(1, 1025) if bytes_per_param_at(n) * LLAMA2_7B <= budget)


@figure("capstone-zero3-gpus-for-7b", COMPUTED, """the fewest N with Llama-2-7B's parameters x
        sharding_math.zero_bytes_per_parameter(3, N) (16 / N bytes) <= 24 GB""")
def _capstone_zero3_gpus():
    devices = _zero3_devices(lambda n: zero_bytes_per_parameter(3, n))
    return devices, {
        "rounded down (16 P / 24 GB = 4.49 -> 4)": math.floor(16 * LLAMA2_7B / BUDGET_24GB),
        "ZeRO-2's 2 + 14/N (the 16-bit weights left whole)": _zero3_devices(lambda n: zero_bytes_per_parameter(2, n))}


@figure("capstone-checkpointing-time", COMPUTED, """memory_advisor.time_factor(checkpointing=True, lora=False,
        mixed_precision=False): (2PD forward + 4PD backward + 2PD recompute) / 6PD""")
def _capstone_checkpointing_time():
    return time_factor(True, False, False), {
        "the backward recomputed too ((2 + 4 + 2 + 4) / 6)": 2.0,
        "the seed's +30% typed as the factor": 1.30,
        "the recompute counted against the backward alone (1 + 2/4)": 1.5}


@figure("capstone-lora-time", COMPUTED, """memory_advisor.time_factor(checkpointing=False, lora=True,
        mixed_precision=False): (2PD forward + 2PD activation gradients) / 6PD""")
def _capstone_lora_time():
    return time_factor(False, True, False), {
        "no saving (the frozen weights still cost their gradients)": time_factor(False, False, False),
        "the whole backward skipped (forward only, 2PD / 6PD)": 2 / 6,
        "half (the weight gradients taken as half the step)": 0.5}


@figure("capstone-24gb-in-gib", COMPUTED, "planner.parse_budget('24GB') / 2**30")
def _capstone_24gb_in_gib():
    gib = parse_budget("24GB") / GIB
    return gib, {"GB typed as GiB (no conversion)": 24.0,
                 "multiplied instead of divided (24 x 2^30 / 10^9)": 24 * GIB / GB,
                 "converted with 1024^2 once, then / 1000 (MiB as GiB)": 24 * GB / MIB / 1000,
                 "divided by 1.024 once": 24 / 1.024}

"""Fit a model to a memory budget: choose the techniques, predict the peak and the step time.

    from efftrain_lib.planner import choose_plan, explain
    plan = choose_plan("Llama-2-7B", budget_bytes=24e9, devices=1, effective_batch=16, seq_len=2048)
    print(plan.describe())
    print(explain(plan, "Llama-2-7B", 24e9).to_text())

A `Plan` says what a training step does: LoRA (rank, targets) or full fine-tuning, a 4-bit base under
LoRA (QLoRA's NF4 with double quantization), how many decoder layers are checkpointed, the precision,
the micro-batch size and accumulation steps, the devices and the ZeRO stage. Two predictions, each with
one home:

* **Peak memory per device** = the estimator's allocator peak (`memory.estimate_training_memory`,
  `.allocator_peak`): what the step holds plus its temporaries and the optimizer step's buffers, the
  figure a device's allocator would report. Nothing here re-derives a byte: `peak_bytes` only maps the
  plan's fields onto the estimator's arguments.
* **Step time relative to the plain step** (fp32, full fine-tuning, nothing checkpointed, the whole
  per-device batch at once, no sharding, on the same devices), extending the advisor's FLOP count
  (`memory_advisor.time_factor`: forward 2PD, backward 4PD, 2PD with LoRA; recomputing a fraction f of
  the layers adds 2PD f; mixed precision divides by its speedup) by what FLOPs do not see, each a
  `StepCosts` field that is **assumed** unless you measure it:

      mixed_precision_speedup bf16 tensor cores vs TF32 (the advisor's default)       / 2
      communication_share     the part of a data-parallel step spent communicating;
                              ZeRO-3 moves 3 Psi instead of 2 Psi (sharding_math)    x(1 + 0.1 x 0.5)
      micro_batch_overhead    each extra micro-batch: launches, smaller matmuls       + 0.03 per extra one
      dequantize_overhead     a 4-bit base dequantizes every weight for each micro-
                              batch's forward and again for its backward              + 0.08 per micro-batch

  The last two are fixed costs per micro-batch, so they add up with the number of micro-batches instead
  of scaling with the FLOPs (composed as factors of the step, they predicted a QLoRA plan of 4
  micro-batches less than half as slow as it ran on a CPU: benchmarks/capstone.py). The defaults describe a GPU with bf16 tensor cores
  and are assumed, not measured; notebooks/07_capstone.ipynb measures this CPU's.

`choose_plan` searches a `SearchSpace` (the plans the chapter defines) for the fastest plan whose peak
fits the budget (ties: fewer techniques, then the smaller peak), trying plans in order of predicted
time, so a generous budget costs one estimate. When nothing fits it says so with what the smallest plan
needs (`NothingFits`). `frontier` lists every plan that is best for some budget (the budget slider),
`seed_ladder` the seed's order (mixed precision, then checkpointing, then accumulation, then LoRA), and
`explain` the table that says why each technique is on or off.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field, replace

from efftrain_lib.memory import GB, GIB, PRECISIONS, MemoryEstimate, check_choice, estimate_training_memory, shape_of
from efftrain_lib.memory_advisor import SEED_ORDER, mixed_precision_policy, time_factor
from efftrain_lib.meter import MIB
from efftrain_lib.sharding_math import STAGES, check_sharding, communication_volume

__all__ = ["FINETUNING", "Explanation", "NothingFits", "Plan", "SearchSpace", "StepCosts", "choose_plan",
           "estimate_plan", "explain", "format_bytes", "frontier", "minimum_budget", "parse_budget", "peak_bytes",
           "plain_plan", "seed_ladder", "step_time"]

FINETUNING = ("full", "lora", "qlora")  # full fine-tuning, LoRA, LoRA on a 4-bit base (QLoRA)
QLORA_FORMAT = "nf4_dq"  # NF4 with double-quantized scales: QLoRA's base (4.127 bits per weight)
PLAN_PRECISIONS = ("fp32", "bf16_autocast", "bf16")  # what can run in plain torch on a CPU or a GPU


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The techniques of one training step, per device.

    seq_len, micro_batch_size   tokens per sequence, sequences per forward/backward
    accumulation_steps          micro-batches per optimizer step (gradient accumulation)
    precision                   "fp32", "bf16_autocast" (torch.autocast over fp32 weights) or "bf16" (a bf16
                                model: with LoRA, a bf16 frozen base and bf16 adapters)
    lora_rank, lora_targets     None: full fine-tuning; else LoRA of this rank on these Linears
    base_format                 "same" (the precision's dtype) or "nf4_dq" (QLoRA's 4-bit base; needs LoRA)
    checkpointed_layers         the first n decoder layers are checkpointed (0: none)
    devices, sharding_stage     data-parallel devices; ZeRO stage 0 (DDP) .. 3 (FSDP)
    optimizer                   the estimator's optimizer name (AdamW by default)

    Per device and per optimizer step: micro_batch_size x accumulation_steps sequences; the effective
    batch is that times `devices`.
    """

    seq_len: int
    micro_batch_size: int
    accumulation_steps: int = 1
    precision: str = "fp32"
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    base_format: str = "same"
    checkpointed_layers: int = 0
    devices: int = 1
    sharding_stage: int = 0
    optimizer: str = "adamw"

    def __post_init__(self):
        for name in ("seq_len", "micro_batch_size", "accumulation_steps"):
            _positive_int(name, getattr(self, name))
        if self.precision not in PLAN_PRECISIONS:
            raise ValueError(f"precision must be one of {PLAN_PRECISIONS}, got {self.precision!r}")
        if self.lora_rank is not None:
            _positive_int("lora_rank", self.lora_rank)
        targets = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        object.__setattr__(self, "lora_targets", targets)  # frozen: normalised once (a list would not hash)
        if self.base_format not in ("same", QLORA_FORMAT):
            raise ValueError(f"base_format must be 'same' or {QLORA_FORMAT!r} (QLoRA's 4-bit base), "
                             f"got {self.base_format!r}")
        if self.base_format != "same" and self.lora_rank is None:
            raise ValueError("a 4-bit base is frozen: base_format='nf4_dq' needs LoRA (lora_rank)")
        if isinstance(self.checkpointed_layers, bool) or not isinstance(self.checkpointed_layers, int) \
                or self.checkpointed_layers < 0:
            raise ValueError(f"checkpointed_layers must be an integer >= 0, got {self.checkpointed_layers!r}")
        check_sharding(self.devices, self.sharding_stage)
        if self.devices == 1 and self.sharding_stage:
            raise ValueError(f"sharding_stage {self.sharding_stage} shards across devices: one device has "
                             "nothing to shard (use sharding_stage=0)")

    @property
    def per_device_batch(self) -> int:
        return self.micro_batch_size * self.accumulation_steps

    @property
    def effective_batch(self) -> int:
        return self.per_device_batch * self.devices

    @property
    def finetuning(self) -> str:
        return "full" if self.lora_rank is None else ("lora" if self.base_format == "same" else "qlora")

    @property
    def techniques(self) -> tuple[str, ...]:
        """The techniques this plan turns on, by the course's names (the plain step has none)."""
        on = []
        if self.precision != "fp32":
            on.append("mixed precision")
        if self.checkpointed_layers:
            on.append("checkpointing")
        if self.accumulation_steps > 1:
            on.append("accumulation")
        if self.lora_rank is not None:
            on.append("LoRA")
        if self.base_format != "same":
            on.append("4-bit base")
        if self.sharding_stage:
            on.append("sharding")
        return tuple(on)

    def describe(self, n_layers: int | None = None) -> str:
        """One line: 'LoRA r8 (q,v) + 4-bit base + bf16 + checkpointing 2/4 layers + 4 x 2 sequences ...'."""
        parts = ["full fine-tuning" if self.lora_rank is None else
                 f"LoRA r{self.lora_rank} ({','.join(t.split('_')[0] for t in self.lora_targets)})"]
        if self.base_format != "same":
            parts.append("4-bit base (NF4)")
        parts.append({"fp32": "fp32", "bf16_autocast": "bf16 autocast", "bf16": "bf16 model"}[self.precision])
        if self.checkpointed_layers:
            of = f"/{n_layers}" if n_layers else ""
            parts.append(f"checkpointing {self.checkpointed_layers}{of} layers")
        batch = (f"{self.accumulation_steps} x {self.micro_batch_size}" if self.accumulation_steps > 1
                 else f"{self.micro_batch_size}")
        parts.append(f"micro-batches {batch} x {self.seq_len} tokens")
        if self.devices > 1:
            sharding = f"ZeRO-{self.sharding_stage}" if self.sharding_stage else "DDP"
            parts.append(f"{self.devices} devices, {sharding}")
        return " + ".join(parts)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        return out


def plain_plan(plan: Plan) -> Plan:
    """The baseline every step time is relative to: the same workload and devices, no technique on."""
    return Plan(plan.seq_len, plan.per_device_batch, devices=plan.devices, optimizer=plan.optimizer)


# ----------------------------------------------------------------------------------------------
# Predictions: the peak (the estimator's) and the step time (FLOPs plus stated costs)
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _estimate(plan: Plan, shape) -> MemoryEstimate:
    return estimate_training_memory(
        shape, batch_size=plan.per_device_batch, micro_batch_size=plan.micro_batch_size, seq_len=plan.seq_len,
        precision=plan.precision, optimizer=plan.optimizer, lora_rank=plan.lora_rank,
        lora_targets=plan.lora_targets, base_format=plan.base_format, checkpointing=plan.checkpointed_layers,
        devices=plan.devices, sharding_stage=plan.sharding_stage)


def estimate_plan(plan: Plan, model) -> MemoryEstimate:
    """The estimator's prediction for one step of `plan` on one device (cached: plans are values)."""
    if not isinstance(plan, Plan):
        raise ValueError(f"expected a planner.Plan, got {type(plan).__name__}")
    return _estimate(plan, shape_of(model))


def peak_bytes(plan: Plan, model) -> int:
    """The predicted peak of one device: the estimator's allocator peak (Exercise 7.1's API)."""
    return estimate_plan(plan, model).allocator_peak


@dataclass(frozen=True)
class StepCosts:
    """What the FLOP count does not price, as fractions of the plain step's time (see the module docstring).
    `source` says where the numbers come from: assumed, or measured (and where)."""

    mixed_precision_speedup: float = 2.0
    dequantize_overhead: float = 0.08
    micro_batch_overhead: float = 0.03
    communication_share: float = 0.1
    source: str = "assumed: a GPU with bf16 tensor cores (speedup 2 over TF32), not measured"

    def __post_init__(self):
        if not (isinstance(self.mixed_precision_speedup, (int, float)) and self.mixed_precision_speedup > 0):
            raise ValueError(f"mixed_precision_speedup must be positive, got {self.mixed_precision_speedup!r}")
        for name in ("dequantize_overhead", "micro_batch_overhead", "communication_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10:
                raise ValueError(f"{name} must be a fraction of the step time in [0, 10), got {value!r}")


DEFAULT_COSTS = StepCosts()


def step_time(plan: Plan, model, costs: StepCosts | None = None) -> float:
    """Predicted time of one optimizer step relative to `plain_plan(plan)` (which is exactly 1.0)."""
    costs = DEFAULT_COSTS if costs is None else costs
    n_layers = shape_of(model).n_layers
    if plan.checkpointed_layers > n_layers:
        raise ValueError(f"checkpointed_layers {plan.checkpointed_layers} exceeds the model's {n_layers} layers")
    compute = time_factor(plan.checkpointed_layers / n_layers, plan.lora_rank is not None, plan.precision != "fp32",
                          costs.mixed_precision_speedup)
    extra_volume = communication_volume(plan.sharding_stage) / communication_volume(0) - 1  # ZeRO-3: +0.5
    compute *= 1 + costs.communication_share * extra_volume
    k = plan.accumulation_steps  # fixed costs per micro-batch, whatever its size
    dequantize = costs.dequantize_overhead * k if plan.base_format != "same" else 0.0
    return compute + costs.micro_batch_overhead * (k - 1) + dequantize


# ----------------------------------------------------------------------------------------------
# The plans the chapter defines
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """Which plans choose_plan considers.

    finetuning        any of "full", "lora", "qlora" (LoRA on a 4-bit base)
    lora_rank, lora_targets   the adapter LoRA and QLoRA use
    mixed_precision   (False, True): fp32, and bf16 (autocast for full fine-tuning, a bf16 model with LoRA:
                      memory_advisor.mixed_precision_policy)
    checkpointing     fractions of the decoder layers to checkpoint (rounded to whole layers, the first ones)
    micro_batch_sizes None: every divisor of the per-device batch; else those of them that divide it
    sharding_stages   ZeRO stages tried when there are several devices (one device: stage 0 only)
    """

    finetuning: tuple[str, ...] = FINETUNING
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    mixed_precision: tuple[bool, ...] = (False, True)
    checkpointing: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    micro_batch_sizes: tuple[int, ...] | None = None
    sharding_stages: tuple[int, ...] = STAGES
    optimizer: str = "adamw"

    def __post_init__(self):
        for name in ("finetuning", "lora_targets", "mixed_precision", "checkpointing", "sharding_stages"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, bool, int, float)) else tuple(value))
        if not self.finetuning or any(f not in FINETUNING for f in self.finetuning):
            raise ValueError(f"finetuning must be a non-empty choice of {FINETUNING}, got {self.finetuning!r}")
        _positive_int("lora_rank", self.lora_rank)
        if not self.mixed_precision or any(not isinstance(m, bool) for m in self.mixed_precision):
            raise ValueError(f"mixed_precision must be a non-empty tuple of booleans, got {self.mixed_precision!r}")
        if not self.checkpointing or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1
                                         for f in self.checkpointing):
            raise ValueError(f"checkpointing must hold fractions of the layers in [0, 1], got {self.checkpointing!r}")
        if self.micro_batch_sizes is not None:
            object.__setattr__(self, "micro_batch_sizes", tuple(self.micro_batch_sizes))
            for m in self.micro_batch_sizes:
                _positive_int("a micro-batch size", m)
        if not self.sharding_stages or any(s not in STAGES for s in self.sharding_stages):
            raise ValueError(f"sharding_stages must be a non-empty choice of {STAGES}, got {self.sharding_stages!r}")
        check_choice("optimizer", self.optimizer, ("adam", "adamw", "sgd", "sgd_momentum"))

    def plans(self, model, *, devices: int = 1, effective_batch: int = 8, seq_len: int | None = None) -> list[Plan]:
        """Every plan of this space for `model`, `devices` data-parallel devices and an effective batch of
        `effective_batch` sequences of `seq_len` tokens (default: the model's maximum)."""
        shape = shape_of(model)
        _positive_int("devices", devices)
        _positive_int("effective_batch", effective_batch)
        if effective_batch % devices:
            raise ValueError(f"effective_batch ({effective_batch}) must be a multiple of devices ({devices}): "
                             "every device runs the same number of sequences")
        seq = shape.max_seq_len if seq_len is None else _positive_int("seq_len", seq_len)
        per_device = effective_batch // devices
        micros = [m for m in (self.micro_batch_sizes or range(1, per_device + 1)) if per_device % m == 0]
        if not micros:
            raise ValueError(f"none of micro_batch_sizes {self.micro_batch_sizes} divides the per-device batch "
                             f"({per_device})")
        layers = sorted({round(f * shape.n_layers) for f in self.checkpointing})
        stages = [s for s in self.sharding_stages if devices > 1 or s == 0] or [0]
        plans = []
        for finetuning in self.finetuning:
            lora = finetuning != "full"
            for mixed in self.mixed_precision:
                for n in layers:
                    for micro in sorted(micros, reverse=True):
                        for stage in stages:
                            plans.append(Plan(seq, micro, per_device // micro,
                                              mixed_precision_policy(lora) if mixed else "fp32",
                                              self.lora_rank if lora else None, self.lora_targets,
                                              QLORA_FORMAT if finetuning == "qlora" else "same", n, devices, stage,
                                              self.optimizer))
        return plans


# ----------------------------------------------------------------------------------------------
# Choosing
# ----------------------------------------------------------------------------------------------


class NothingFits(ValueError):
    """No plan of the space fits the budget; `smallest` is the plan that needs the least, `needed` its peak."""

    def __init__(self, message: str, smallest: Plan, needed: int, budget: float):
        super().__init__(message)
        self.smallest, self.needed, self.budget = smallest, needed, budget

    def __reduce__(self):  # picklable with its fields (a rank's error crosses processes)
        return type(self), (str(self), self.smallest, self.needed, self.budget)


def check_budget(budget_bytes) -> float:
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or not math.isfinite(budget_bytes) \
            or budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive, finite number of bytes per device, got {budget_bytes!r}")
    return float(budget_bytes)


def _ranked(plans: list[Plan], shape, costs) -> list[tuple[float, int, Plan]]:
    """(step time rounded to 12 digits, number of techniques, plan), fastest first."""
    keyed = [(round(step_time(p, shape, costs), 12), len(p.techniques), p) for p in plans]
    return sorted(keyed, key=lambda k: k[:2])


def _smallest(plans: list[Plan], shape) -> tuple[Plan, int]:
    peaks = [(peak_bytes(p, shape), i) for i, p in enumerate(plans)]
    needed, index = min(peaks)
    return plans[index], needed


def choose_plan(model, budget_bytes: float, devices: int = 1, effective_batch: int = 8, *, seq_len: int | None = None,
                space: SearchSpace | None = None, costs: StepCosts | None = None) -> Plan:
    """The fastest plan of `space` whose predicted peak fits `budget_bytes` on each of `devices` devices
    (Exercise 7.2's API). Ties in predicted time: the plan with fewer techniques, then the smaller peak.
    NothingFits (a ValueError) names what the smallest plan needs when none fits."""
    budget = check_budget(budget_bytes)
    shape = shape_of(model)
    space = SearchSpace() if space is None else space
    plans = space.plans(shape, devices=devices, effective_batch=effective_batch, seq_len=seq_len)
    ranked = _ranked(plans, shape, costs)
    start = 0
    while start < len(ranked):  # groups of plans with the same time and the same number of techniques
        stop = start
        while stop < len(ranked) and ranked[stop][:2] == ranked[start][:2]:
            stop += 1
        peaks = [(peak_bytes(p, shape), i) for i, (_, _, p) in enumerate(ranked[start:stop], start)]
        fitting = [(peak, i) for peak, i in peaks if peak <= budget]
        if fitting:
            return ranked[min(fitting)[1]][2]
        start = stop
    smallest, needed = _smallest(plans, shape)
    raise NothingFits(f"nothing fits in {format_bytes(budget)} per device: the smallest plan needs "
                      f"{format_bytes(needed)} ({needed:,} bytes): {smallest.describe(shape.n_layers)}. Raise the "
                      "budget, add devices (with ZeRO), shorten the sequences or widen the search space.",
                      smallest, needed, budget)


def minimum_budget(model, devices: int = 1, effective_batch: int = 8, *, seq_len: int | None = None,
                   space: SearchSpace | None = None) -> int:
    """The least budget per device at which some plan of the space fits: the smallest predicted peak
    (Exercise 7.3's API)."""
    shape = shape_of(model)
    space = SearchSpace() if space is None else space
    return _smallest(space.plans(shape, devices=devices, effective_batch=effective_batch, seq_len=seq_len), shape)[1]


@dataclass(frozen=True)
class FrontierPoint:
    """A plan that is the best choice for budgets from `peak` up to the previous point's peak."""

    plan: Plan
    peak: int
    time: float


def frontier(model, devices: int = 1, effective_batch: int = 8, *, seq_len: int | None = None,
             space: SearchSpace | None = None, costs: StepCosts | None = None) -> list[FrontierPoint]:
    """Every plan choose_plan returns for some budget, from the largest budget down: the fastest plan
    first, then each plan that needs less memory than all faster ones. choose_plan(budget) is the first
    point whose peak fits the budget (the budget slider reads this list; every plan is estimated once)."""
    shape = shape_of(model)
    space = SearchSpace() if space is None else space
    plans = space.plans(shape, devices=devices, effective_batch=effective_batch, seq_len=seq_len)
    points, lowest = [], math.inf
    for time, _, plan in sorted(_ranked(plans, shape, costs), key=lambda k: (k[0], k[1], peak_bytes(k[2], shape))):
        peak = peak_bytes(plan, shape)
        if peak < lowest:
            points.append(FrontierPoint(plan, peak, time))
            lowest = peak
    return points


def seed_ladder(model, budget_bytes: float, devices: int = 1, effective_batch: int = 8, *,
                seq_len: int | None = None, lora_rank: int = 8, lora_targets=("q_proj", "v_proj"),
                costs: StepCosts | None = None) -> list[tuple[Plan, int, float, bool]]:
    """The seed's advice as plans: start plain, then add mixed precision, checkpointing (every layer),
    accumulation (the largest micro-batch that fits, else 1) and LoRA, one at a time, stopping at the
    first rung that fits. Each rung: (plan, predicted peak, predicted time, fits)."""
    budget = check_budget(budget_bytes)
    shape = shape_of(model)
    plain = SearchSpace(finetuning=("full",), mixed_precision=(False,), checkpointing=(0.0,), sharding_stages=(0,))
    plan = max(plain.plans(shape, devices=devices, effective_batch=effective_batch, seq_len=seq_len),
               key=lambda p: p.micro_batch_size)
    rungs = []
    for step in ("none",) + SEED_ORDER:
        if step == "mixed precision":
            plan = replace(plan, precision=mixed_precision_policy(plan.lora_rank is not None))
        elif step == "checkpointing":
            plan = replace(plan, checkpointed_layers=shape.n_layers)
        elif step == "accumulation":
            per_device = plan.per_device_batch
            if per_device == 1:
                continue  # nothing to accumulate
            for micro in [m for m in range(per_device - 1, 0, -1) if per_device % m == 0]:
                plan = replace(plan, micro_batch_size=micro, accumulation_steps=per_device // micro)
                if peak_bytes(plan, shape) <= budget:
                    break
        elif step == "LoRA":
            plan = replace(plan, lora_rank=lora_rank, lora_targets=tuple(lora_targets),
                           precision=mixed_precision_policy(True) if plan.precision != "fp32" else "fp32")
        peak = peak_bytes(plan, shape)
        rungs.append((plan, peak, step_time(plan, shape, costs), peak <= budget))
        if peak <= budget:
            break
    return rungs


# ----------------------------------------------------------------------------------------------
# Why this plan: the table
# ----------------------------------------------------------------------------------------------


@dataclass
class Explanation:
    """Rows (label, plan, peak, time, fits, why) comparing a plan with its alternatives."""

    budget: float
    n_layers: int
    rows: list[tuple[str, Plan | None, int, float, bool, str]] = field(default_factory=list)

    def to_text(self) -> str:
        width = max(len(row[0]) for row in self.rows)
        lines = [f"{'':<{width}} {'peak/device':>12} {'time':>6}  {'fits':<4}  why",
                 f"{'budget':<{width}} {format_bytes(self.budget):>12}"]
        for label, _, peak, time, fits, why in self.rows:
            lines.append(f"{label:<{width}} {format_bytes(peak):>12} {'x' + format(time, '.2f'):>6}  "
                         f"{'yes' if fits else 'NO':<4}  {why}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [f"| | peak per device | step time | fits {format_bytes(self.budget)} | why |", "|---|---|---|---|---|"]
        for label, _, peak, time, fits, why in self.rows:
            lines.append(f"| {label} | {format_bytes(peak)} | x{time:.2f} | {'yes' if fits else '**no**'} | {why} |")
        return "\n".join(lines)


def _without(plan: Plan, technique: str) -> Plan:
    if technique == "mixed precision":
        return replace(plan, precision="fp32")
    if technique == "checkpointing":
        return replace(plan, checkpointed_layers=0)
    if technique == "accumulation":
        return replace(plan, micro_batch_size=plan.per_device_batch, accumulation_steps=1)
    if technique == "LoRA":
        return replace(plan, lora_rank=None, base_format="same",
                       precision=mixed_precision_policy(False) if plan.precision != "fp32" else "fp32")
    if technique == "4-bit base":
        return replace(plan, base_format="same")
    return replace(plan, sharding_stage=0)  # sharding


def explain(plan: Plan, model, budget_bytes: float, costs: StepCosts | None = None) -> Explanation:
    """Why each technique of `plan` is on (without it, the peak or the time is worse) and what the usual
    shortcuts would give: just checkpointing every layer, and the seed's ladder."""
    budget = check_budget(budget_bytes)
    shape = shape_of(model)

    def row(label, p, why):
        peak = peak_bytes(p, shape)
        explanation.rows.append((label, p, peak, step_time(p, shape, costs), peak <= budget, why))
        return peak

    explanation = Explanation(budget, shape.n_layers)
    chosen_time = step_time(plan, shape, costs)
    row("chosen: " + (" + ".join(plan.techniques) or "nothing"), plan, plan.describe(shape.n_layers))
    row("plain step (nothing on)", plain_plan(plan), "the baseline of every time")
    for technique in plan.techniques:
        other = _without(plan, technique)
        other_peak, other_time = peak_bytes(other, shape), step_time(other, shape, costs)
        if other_peak > budget:
            why = f"needed: without it the peak is {format_bytes(other_peak)}"
        elif other_time > chosen_time:
            why = f"fits without it, but x{other_time / chosen_time:.2f} slower"
        else:
            why = "fits without it and no slower: kept for the smaller peak"
        row(f"without {technique}", other, why)
    checkpointing_only = replace(plain_plan(plan), checkpointed_layers=shape.n_layers)
    row("just checkpointing (every layer)", checkpointing_only, "the usual first reflex")
    ladder = seed_ladder(shape, budget, plan.devices, plan.effective_batch, seq_len=plan.seq_len,
                         lora_rank=plan.lora_rank or 8, lora_targets=plan.lora_targets, costs=costs)
    final, _, _, _ = ladder[-1]
    row("the seed's ladder: " + (" + ".join(final.techniques) or "nothing"), final,
        "mixed precision -> checkpointing -> accumulation -> LoRA, first rung that fits")
    return explanation


# ----------------------------------------------------------------------------------------------
# Bytes in and out
# ----------------------------------------------------------------------------------------------

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": GB, "tb": 10**12, "kib": 2**10, "mib": MIB, "gib": GIB,
          "tib": 2**40}


def parse_budget(text: str) -> float:
    """'24GB' -> 24e9, '24 GiB' -> 24 * 2**30, '3.5MiB' -> 3.5 * 2**20. A bare number is refused: GB and
    GiB differ by 7%, so the unit must be said."""
    if not isinstance(text, str):
        raise ValueError(f"a budget is text such as '24GB' or '3MiB', got {text!r}")
    match = re.fullmatch(r"\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match:
        raise ValueError(f"cannot read the budget {text!r}: write a number and a unit, e.g. 24GB or 3MiB")
    value, unit = float(match.group(1)), match.group(2).lower()
    if value <= 0:
        raise ValueError(f"the budget must be positive, got {text!r}")
    if not unit:
        raise ValueError(f"the budget {text!r} has no unit: say 24GB (10^9 bytes) or 24GiB (2^30 bytes)")
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {match.group(2)!r} in {text!r}; use one of B, KB, MB, GB, TB, KiB, MiB, "
                         "GiB, TiB")
    return check_budget(value * _UNITS[unit])


def format_bytes(nbytes: float) -> str:
    """GB (10^9) from a GB up, MiB (2^20) below: the units devices and the meter speak."""
    return f"{nbytes / GB:.2f} GB" if nbytes >= GB else f"{nbytes / MIB:.3f} MiB"

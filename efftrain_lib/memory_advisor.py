""""My memory is not enough: which technique?" Rank the combinations of the four techniques.

    from efftrain_lib.memory_advisor import advise
    for option in advise("Llama-2-7B", batch_size=8, seq_len=2048, budget_gb=80)[:5]:
        print(option)

Every combination of mixed precision (bf16 autocast), gradient checkpointing (every layer), gradient
accumulation (the largest micro-batch that fits) and LoRA is estimated with
`memory.estimate_training_memory` (its allocator peak: what the step holds plus its temporaries and the
optimizer step's buffers), and given a predicted time cost
relative to the plain step, from FLOPs (C = 6PD: forward 2PD, backward 4PD):

* checkpointing recomputes the forward: +2PD, x1.33;
* LoRA skips the frozen weights' gradients (about half of backward): 4PD instead of 6PD, x0.67
  (the recomputed forward of checkpointing still costs 2PD);
* mixed precision (bf16 autocast; with LoRA, a bf16 frozen base) runs the matmuls in bf16: `mixed_precision_speedup` (default 2, a tensor-core GPU
  vs TF32; on a CPU it can be a slowdown: measure);
* accumulation does the same FLOPs in smaller pieces: x1 here; small micro-batches use a GPU less
  well, which this model does not price.

With `quantization=True` two more techniques join (the QLoRA chapter): a 4-bit frozen base under LoRA
(NF4 with double quantization) and 8-bit optimizer state. Their extra time is not in the FLOP count
(dequantizing every weight twice per step; quantizing the state), so it is priced by two assumed
overheads, `dequantize_overhead` (+25%) and `state_quantization_overhead` (+5%): measure yours (the
chapter measures its CPU figure) and pass them.

Options that fit come first, fastest first; then those that do not, smallest first. `seed_order`
walks the seed notes' order (mixed precision, then checkpointing, then accumulation, then LoRA) and
stops at the first that fits, so the two can be set side by side.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from efftrain_lib.memory import GB, estimate_training_memory, shape_of

TECHNIQUES = ("mixed precision", "checkpointing", "accumulation", "LoRA")
QUANTIZATION = ("4-bit base", "8-bit optimizer")  # advise(..., quantization=True)
SEED_ORDER = TECHNIQUES  # the seed: 先试 Mixed Precision, 再试 Checkpointing, batch 小时用 Accumulation, 参数量大时用 LoRA


@dataclass(frozen=True)
class Option:
    techniques: tuple
    precision: str
    checkpointing: bool
    micro_batch_size: int
    lora_rank: int | None
    peak_bytes: int  # the estimate's allocator peak (temporaries and the optimizer step included)
    model_state_bytes: int
    activation_bytes: int
    time_factor: float
    fits: bool
    base_format: str = "same"
    optimizer_state_format: str = "same"

    @property
    def name(self) -> str:
        return " + ".join(self.techniques) if self.techniques else "none (plain step)"

    def __str__(self) -> str:
        mark = "fits" if self.fits else "too big"
        micro = f", micro-batch {self.micro_batch_size}" if "accumulation" in self.techniques else ""
        return f"{self.name:<58} {self.peak_bytes / GB:8.1f} GB  x{self.time_factor:.2f} time  {mark}{micro}"


def time_factor(checkpointing: bool | float, lora: bool, mixed_precision: bool,
                mixed_precision_speedup: float = 2.0) -> float:
    """Predicted step time relative to the plain fp32 step, from FLOPs (see the module docstring).

    checkpointing: True / False, or the fraction of the decoder layers recomputed (0..1: the planner's
    checkpointing of some layers recomputes that fraction of the forward)."""
    if mixed_precision_speedup <= 0:
        raise ValueError(f"mixed_precision_speedup must be positive, got {mixed_precision_speedup}")
    recomputed = float(checkpointing)
    if not 0.0 <= recomputed <= 1.0:
        raise ValueError(f"checkpointing must be a bool or a fraction of the layers in [0, 1], got {checkpointing!r}")
    forward, backward = 2.0, (2.0 if lora else 4.0)
    flops = forward + backward + 2.0 * recomputed
    return flops / 6.0 / (mixed_precision_speedup if mixed_precision else 1.0)


def mixed_precision_policy(lora: bool) -> str:
    """The estimator's precision that "mixed precision" means here. Full fine-tuning: torch.autocast over
    fp32 weights ("bf16_autocast"). With LoRA: a bf16 model ("bf16"), since under autocast an fp32 frozen
    base would be re-cast on every call and each bf16 copy kept for backward (2 bytes/param more than
    fp32 LoRA: the estimator and the meter both show it)."""
    return "bf16" if lora else "bf16_autocast"


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def _estimate(model, batch_size, seq_len, optimizer, optimizer_impl, precision, ckpt, micro, lora_rank, lora_targets,
              attention, base_format="same", optimizer_state_format="same"):
    est = estimate_training_memory(model, batch_size=batch_size, seq_len=seq_len, precision=precision,
                                   optimizer=optimizer, optimizer_impl=optimizer_impl, lora_rank=lora_rank,
                                   lora_targets=lora_targets, checkpointing=ckpt, micro_batch_size=micro,
                                   attention=attention, base_format=base_format,
                                   optimizer_state_format=optimizer_state_format)
    return est, est.allocator_peak


def advise(model, *, batch_size: int, seq_len: int, budget_gb: float, optimizer: str = "adam",
           optimizer_impl: str = "foreach", lora_rank: int = 8, lora_targets=("q_proj", "v_proj"),
           attention: str = "flash", mixed_precision_speedup: float = 2.0, quantization: bool = False,
           dequantize_overhead: float = 0.25, state_quantization_overhead: float = 0.05) -> list[Option]:
    """Every combination of the four techniques for this model, batch and memory budget, ranked.

    budget_gb: usable device memory in GB (10^9 bytes). With accumulation, the largest micro-batch
    dividing batch_size that fits the budget is chosen (1 if none fits).
    quantization: also try a 4-bit base under LoRA (NF4 + double quantization) and 8-bit optimizer state,
    each slowing the step by its overhead (a fraction: 0.25 = 25% slower).
    """
    for name, value in (("dequantize_overhead", dequantize_overhead),
                        ("state_quantization_overhead", state_quantization_overhead)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10:
            raise ValueError(f"{name} must be a fraction of the step time in [0, 10), got {value!r}")
    if (not isinstance(budget_gb, (int, float)) or isinstance(budget_gb, bool) or not math.isfinite(budget_gb)
            or budget_gb <= 0):
        raise ValueError(f"budget_gb must be a finite positive number of GB, got {budget_gb!r}")
    shape_of(model)  # fail early on a bad model
    budget = budget_gb * GB
    options = []
    variants = list(itertools.product((False, True), repeat=2)) if quantization else [(False, False)]
    for (mp, ckpt, acc, lora), (q4, q8) in itertools.product(itertools.product((False, True), repeat=4), variants):
        if q4 and not lora:
            continue  # a quantized base must be frozen: it needs LoRA
        formats = ("nf4_dq" if q4 else "same", "8bit" if q8 else "same")
        precision = mixed_precision_policy(lora) if mp else "fp32"
        rank = lora_rank if lora else None
        micros = _divisors_desc(batch_size)[1:] if acc else [batch_size]
        if acc and not micros:
            continue  # batch_size 1: nothing to accumulate
        chosen = None
        for micro in micros:
            est, peak = _estimate(model, batch_size, seq_len, optimizer, optimizer_impl, precision, ckpt, micro,
                                  rank, lora_targets, attention, *formats)
            chosen = (micro, est, peak)
            if peak <= budget:
                break
        micro, est, peak = chosen
        techniques = tuple(t for t, on in zip(TECHNIQUES + QUANTIZATION, (mp, ckpt, acc, lora, q4, q8)) if on)
        slowdown = (1 + dequantize_overhead * q4) * (1 + state_quantization_overhead * q8)
        options.append(Option(techniques, precision, ckpt, micro, rank, int(peak), est.model_states,
                              est.all_at_once["activations"] + est.all_at_once["cast_weights"],
                              time_factor(ckpt, lora, mp, mixed_precision_speedup) * slowdown, peak <= budget,
                              *formats))
    options.sort(key=lambda o: (not o.fits, o.time_factor if o.fits else o.peak_bytes, o.peak_bytes))
    return options


def seed_order(options: list[Option]) -> list[tuple[Option, bool]]:
    """The seed's ladder: add mixed precision, then checkpointing, then accumulation, then LoRA, one at
    a time; each rung with whether it fits. Stops at the first rung that fits."""
    by_name = {o.techniques: o for o in options}
    ladder = []
    for k in range(len(SEED_ORDER) + 1):
        option = by_name.get(tuple(SEED_ORDER[:k]))
        if option is None:  # batch_size 1: no accumulation rung
            continue
        ladder.append((option, option.fits))
        if option.fits:
            break
    return ladder


def compare_with_seed(options: list[Option]) -> str:
    """A few lines setting the advisor's best option beside the seed's order."""
    ladder = seed_order(options)
    best = next((o for o in options if o.fits), None)
    lines = ["The seed's order (mixed precision -> checkpointing -> accumulation -> LoRA):"]
    for option, fits in ladder:
        lines.append(f"  {option.name:<58} {option.peak_bytes / GB:8.1f} GB  x{option.time_factor:.2f}  "
                     f"{'fits' if fits else 'too big'}")
    if best is None:
        lines.append("Nothing fits: not even all four techniques together (shard the model states: ZeRO, "
                     "8-bit optimizers, QLoRA).")
        return "\n".join(lines)
    lines.append(f"Advisor's pick: {best.name} ({best.peak_bytes / GB:.1f} GB, x{best.time_factor:.2f} time).")
    seed_final = ladder[-1][0]
    if not ladder[-1][1]:
        lines.append("The seed's ladder never fits; the advisor's pick does.")
    elif seed_final.techniques != best.techniques:
        extra = sorted(set(seed_final.techniques) - set(best.techniques), key=TECHNIQUES.index)
        missing = sorted(set(best.techniques) - set(seed_final.techniques), key=TECHNIQUES.index)
        why = []
        if extra:
            why.append(f"the ladder adds {', '.join(extra)}, which the budget does not need")
        if missing:
            why.append(f"it misses {', '.join(missing)}")
        lines.append(f"Where they disagree: {'; '.join(why)} "
                     f"(x{seed_final.time_factor:.2f} vs x{best.time_factor:.2f} time).")
    else:
        lines.append("Here the seed's ladder lands on the same plan.")
    return "\n".join(lines)


def devices_needed(model, *, budget_gb: float, sharding_stage: int = 3, batch_size: int = 1, seq_len: int = 2048,
                   precision: str = "fp16_master", optimizer: str = "adam", checkpointing=True,
                   max_devices: int = 4096, **options) -> tuple[int | None, object]:
    """The fewest data-parallel devices on which one device's predicted peak (with the workspace
    allowance) fits `budget_gb`, with the model states sharded at `sharding_stage` (ZeRO 0..3); batch_size
    is per device. Returns (devices, that device's estimate), or (None, the estimate at max_devices) when
    even max_devices do not fit: what stays unsharded (activations; weights and gradients below stage 3)
    is too big on its own. precision defaults to the ZeRO paper's mixed precision (fp16 weights and
    gradients, fp32 master copy and Adam moments: 16 bytes per parameter). options: the estimator's."""
    if not isinstance(budget_gb, (int, float)) or isinstance(budget_gb, bool) or not budget_gb > 0:
        raise ValueError(f"budget_gb must be a positive number of GB, got {budget_gb!r}")
    if isinstance(max_devices, bool) or not isinstance(max_devices, int) or max_devices < 1:
        raise ValueError(f"max_devices must be an integer >= 1, got {max_devices!r}")

    def estimate(devices):
        est = estimate_training_memory(model, batch_size=batch_size, seq_len=seq_len, precision=precision,
                                       optimizer=optimizer, checkpointing=checkpointing, devices=devices,
                                       sharding_stage=sharding_stage, **options)
        return est, est.allocator_peak <= budget_gb * GB

    best, fits = estimate(max_devices)
    if not fits:
        return None, best
    low, high = 1, max_devices  # the peak never grows with more devices: bisect for the first that fits
    while low < high:
        middle = (low + high) // 2
        est, fits = estimate(middle)
        if fits:
            high, best = middle, est
        else:
            low = middle + 1
    return high, (best if best.settings["devices"] == high else estimate(high)[0])

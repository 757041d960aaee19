"""The gradient-accumulation chapter's slider: micro-batch size against accumulation steps.

At a fixed effective batch B, a micro-batch of b means k = B / b accumulation steps. Plain functions
compute what the widget shows from measured profiles (`profile_accumulation`, here), and one
estimate carries the trade-off to a 7B model (Korthikanti et al. 2022's activation formula). The
widget (`tradeoff_explorer`) is a thin shell around them; nbval never renders a widget, so the logic
lives here and pytest tests it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from efftrain_lib.accumulation import split_batch
from efftrain_lib.devices import model_device
from efftrain_lib.liveplot import CATEGORY_COLORS
from efftrain_lib.meter import MIB, MemoryBreakdown, MemoryMeter
from efftrain_lib.timing import interleaved
from efftrain_lib.training import Batch, training_step
from efftrain_lib.widgets import interactive_figure

MEMORY_PARTS = ("weights", "gradients", "optimizer_state", "activations")


# ----------------------------------------------------------------------------------------------
# Measuring: time per effective batch and peak memory, by micro-batch size
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccumulationProfile:
    """One configuration's measurement: k micro-batches of b make one effective batch."""

    micro_batch_size: int
    accumulation_steps: int
    seconds_per_window: float  # median wall time of one optimizer step (all k micro-batches)
    peak: MemoryBreakdown  # the window's peak, by category, with its source

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.accumulation_steps

    @property
    def peak_bytes(self) -> int:
        return self.peak.total


def profile_accumulation(
    model: torch.nn.Module,
    batch: Batch,
    micro_batch_sizes: Sequence[int],
    *,
    make_optimizer: Callable = lambda params: torch.optim.AdamW(params, lr=1e-3),
    repeats: int = 3,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> list[AccumulationProfile]:
    """Time and memory of one effective batch, cut into micro-batches of each size.

    Each configuration trains its own copy of `model`. Memory: one window under a MemoryMeter (CPU:
    exact accounting; CUDA: the allocator). Time: the median of `repeats` windows without the meter
    (after one warm-up window), timed in interleaved rounds (efftrain_lib.timing) so that a burst of
    load on a shared machine hits all configurations alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    size = len(batch[0])
    bad = [b for b in micro_batch_sizes if not isinstance(b, int) or b < 1 or size % b]
    if bad or not micro_batch_sizes:
        raise ValueError(f"micro-batch sizes must divide the effective batch ({size}); got {list(micro_batch_sizes)}")
    steps, peaks = {}, {}
    for micro in micro_batch_sizes:
        trial = copy.deepcopy(model)
        optimizer = make_optimizer([p for p in trial.parameters() if p.requires_grad])
        window = split_batch(batch, micro)
        training_step(trial, optimizer, window, autocast_dtype=autocast_dtype)  # warm-up: creates Adam state
        meter = MemoryMeter()
        training_step(trial, optimizer, window, autocast_dtype=autocast_dtype, meter=meter)
        peaks[micro] = meter.last.peak
        steps[micro] = (lambda t=trial, o=optimizer, w=window: training_step(t, o, w, autocast_dtype=autocast_dtype))
    timings = interleaved(steps, rounds=repeats, device=model_device(model), progress=progress, desc="timing rounds")
    return [AccumulationProfile(micro, size // micro, timings.seconds[micro], peaks[micro])
            for micro in micro_batch_sizes]


def configurations(effective_batch: int) -> list[tuple[int, int]]:
    """(micro_batch_size, accumulation_steps) pairs that make exactly `effective_batch`, largest micro first."""
    if not isinstance(effective_batch, int) or effective_batch < 1:
        raise ValueError(f"effective_batch must be an integer >= 1, got {effective_batch!r}")
    return [(b, effective_batch // b) for b in range(effective_batch, 0, -1) if effective_batch % b == 0]


def _check_profiles(profiles: Sequence[AccumulationProfile]) -> None:
    if not profiles:
        raise ValueError("no profiles: measure some with profile_accumulation(...) first")
    sizes = {p.effective_batch for p in profiles}
    if len(sizes) != 1:
        raise ValueError(f"profiles must share one effective batch to be compared, got {sorted(sizes)}")


def tradeoff_rows(profiles: Sequence[AccumulationProfile]) -> list[dict]:
    """One row per profile: micro-batch, k, peak and activation MiB, ms per effective batch, and both
    relative to the largest micro-batch (k smallest), which is the baseline."""
    _check_profiles(profiles)
    ordered = sorted(profiles, key=lambda p: -p.micro_batch_size)
    base = ordered[0]
    return [
        {
            "micro_batch": p.micro_batch_size,
            "accumulation_steps": p.accumulation_steps,
            "peak_mib": p.peak_bytes / MIB,
            "activations_mib": p.peak.activations / MIB,
            "ms_per_effective_batch": 1e3 * p.seconds_per_window,
            "memory_vs_baseline": p.peak_bytes / base.peak_bytes,
            "time_vs_baseline": p.seconds_per_window / base.seconds_per_window,
        }
        for p in ordered
    ]


def activation_gb_7b(micro_batch: int, seq_len: int = 2048, hidden: int = 4096, heads: int = 32,
                     layers: int = 32) -> float:
    """Activations of one micro-batch of a LLaMA-7B-shaped model, in GB: L * s*b*h*(34 + 5*a*s/h) bytes
    (Korthikanti et al. 2022; fp16, no recomputation, no tensor parallelism)."""
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    return layers * seq_len * micro_batch * hidden * (34 + 5 * heads * seq_len / hidden) / 1e9


# ---- drawing (plain matplotlib, so the static notebook shows the same picture) ----

def draw_tradeoff(axes, profiles: Sequence[AccumulationProfile], micro_batch_size: int | None = None) -> None:
    """Left: peak memory by category per micro-batch size. Right: time per effective batch.
    The chosen micro-batch (if any) is highlighted in both."""
    rows = tradeoff_rows(profiles)
    ordered = sorted(profiles, key=lambda p: -p.micro_batch_size)
    labels = [f"b={p.micro_batch_size}\nk={p.accumulation_steps}" for p in ordered]
    x = list(range(len(ordered)))
    ax_mem, ax_time = axes
    bottoms = [0.0] * len(ordered)
    for part in MEMORY_PARTS:
        heights = [getattr(p.peak, part) / MIB for p in ordered]
        ax_mem.bar(x, heights, bottom=bottoms, color=CATEGORY_COLORS[part], label=part, width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax_time.bar(x, [r["ms_per_effective_batch"] for r in rows], color="0.55", width=0.6)
    chosen = next((i for i, p in enumerate(ordered) if p.micro_batch_size == micro_batch_size), None)
    if chosen is not None:
        for ax in axes:
            ax.axvspan(chosen - 0.4, chosen + 0.4, color="gold", alpha=0.35, lw=0, zorder=0)
        r = rows[chosen]
        ax_mem.set_title(f"b={r['micro_batch']}, k={r['accumulation_steps']}: peak {r['peak_mib']:.2f} MiB "
                         f"({r['memory_vs_baseline']:.2f}x)", fontsize=9)
        ax_time.set_title(f"{r['ms_per_effective_batch']:.0f} ms per effective batch "
                          f"({r['time_vs_baseline']:.2f}x)", fontsize=9)
    ax_mem.set(xticks=x, ylabel="MiB at the window's peak")
    ax_mem.set_xticklabels(labels, fontsize=7)
    ax_mem.legend(fontsize=7, loc="upper right")
    ax_time.set(xticks=x, ylabel="ms per effective batch")
    ax_time.set_xticklabels(labels, fontsize=7)
    source = ordered[0].peak.source
    ax_mem.annotate(f"memory source: {source}", xy=(0, -0.28), xycoords="axes fraction", fontsize=5.5,
                    color="0.4", annotation_clip=False)


def draw_7b_estimate(ax, effective_batch: int = 64, micro_batch: int | None = None) -> None:
    """Activations per micro-batch of a 7B model at a fixed effective batch (the same trade-off at scale)."""
    configs = configurations(effective_batch)
    micro = [b for b, _ in configs]
    ax.plot(micro, [activation_gb_7b(b) for b in micro], "o-", color=CATEGORY_COLORS["activations"])
    ax.axhline(80, color="red", linestyle=":", label="one 80 GB GPU")
    if micro_batch is not None:
        ax.plot([micro_batch], [activation_gb_7b(micro_batch)], "o", color="gold", markersize=11, zorder=0)
    ax.set_xscale("log")
    ax.set_xticks(micro, [str(b) for b in micro], minor=False)
    ax.set_xticks([], minor=True)
    ax.set(yscale="log", xlabel=f"micro-batch b (k = {effective_batch} / b)",
           ylabel="GB of activations", title=f"LLaMA-7B shape, seq 2048, effective batch {effective_batch}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)


# ---- widget (thin shell) ----

def tradeoff_explorer(profiles: Sequence[AccumulationProfile]):
    """A slider over the measured micro-batch sizes: memory and time at a fixed effective batch."""
    import ipywidgets as widgets

    rows = tradeoff_rows(profiles)
    effective = profiles[0].effective_batch

    def draw(axes, micro_batch):
        draw_tradeoff(axes, profiles, micro_batch)
        axes[0].figure.suptitle(f"effective batch {effective} sequences = micro-batch b x k accumulation steps",
                                fontsize=10)

    return interactive_figure(draw, "Accumulation trade-off explorer", figsize=(9, 3.3), ncols=2,
                              micro_batch=widgets.SelectionSlider(
                                  options=[(f"b={r['micro_batch']}, k={r['accumulation_steps']}", r["micro_batch"])
                                           for r in rows],
                                  value=rows[0]["micro_batch"], description="micro-batch", continuous_update=False,
                                  layout=widgets.Layout(width="420px")))

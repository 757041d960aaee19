"""Timing that survives a shared machine: interleaved rounds, medians, and ratios within a round.

Every timing the course prints or benchmarks compares runs. Each round times every run once, in an
order rotated from round to round, so load from other processes lands on all runs alike; the median
over rounds drops the rounds a burst of load hit; and a ratio is taken within each round (ours / the
reference, back to back), then its median, which cancels the drift of the machine between rounds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import torch
from tqdm.auto import tqdm

__all__ = ["FIRST", "Timings", "interleaved", "median_ratio", "seconds_per_call", "sync"]

#: `reference=FIRST`: ratios against the first run (a run's label may itself be None).
FIRST = object()


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer measures it (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device | str = "cpu", inner: int = 1) -> float:
    """Seconds per call of fn, averaged over `inner` back-to-back calls (GPU work included)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - start) / inner


@dataclass(frozen=True)
class Timings:
    """seconds: the median seconds per run; ratios: the median over rounds of (run / reference in the
    same round), the figure to compare; samples: every round's seconds, per run."""

    seconds: dict
    ratios: dict
    reference: Hashable
    rounds: int
    samples: dict

    def ratio(self, label: Hashable, to: Hashable) -> float:
        """The median over rounds of (label / to), both timed in the same round."""
        return statistics.median(a / b for a, b in zip(self.samples[label], self.samples[to]))


def interleaved(runs: dict[Hashable, Callable[[], object]], *, rounds: int, reference: Hashable = FIRST,
                device: torch.device | str = "cpu", inner: int = 1, warmup: int = 0,
                setups: dict[Hashable, Callable[[], object]] | None = None, progress: bool = False,
                desc: str = "timing") -> Timings:
    """Time every run in `rounds` interleaved rounds (the order rotated each round); ratios against
    `reference` (default: the first run). `warmup` untimed calls of each run come first; `setups[label]`,
    if given, is called untimed before each of that run's turns (e.g. to switch a model's plan)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1 or not runs:
        raise ValueError(f"interleaved timing needs rounds >= 1 and at least one run, got {rounds!r} and {list(runs)}")
    labels = list(runs)
    reference = labels[0] if reference is FIRST else reference
    if reference not in runs:
        raise ValueError(f"reference {reference!r} is not one of the runs {labels}")
    setups = setups or {}
    for _ in range(warmup):  # allocator, kernels, autograd graph caches
        for label in labels:
            setups.get(label, _nothing)()
            runs[label]()
    samples: dict = {label: [] for label in labels}
    for round_ in tqdm(range(rounds), desc=desc, disable=not progress, leave=False):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            setups.get(label, _nothing)()
            samples[label].append(seconds_per_call(runs[label], device, inner))
    seconds = {label: statistics.median(values) for label, values in samples.items()}
    timings = Timings(seconds, {}, reference, rounds, samples)
    timings.ratios.update({label: timings.ratio(label, reference) for label in labels})
    return timings


def _nothing() -> None:
    pass


def median_ratio(fn_ours, fn_ref, device: torch.device | str, repeats: int, inner: int) -> tuple[float, float, float]:
    """(median seconds of ours, of the reference, median of per-round ratios ours / reference): the
    benchmarks' figure, after three warm-up calls of each."""
    timings = interleaved({"ours": fn_ours, "reference": fn_ref}, rounds=repeats, reference="reference",
                          device=device, inner=inner, warmup=3)
    return timings.seconds["ours"], timings.seconds["reference"], timings.ratios["ours"]

"""The timing protocol every benchmark shares: medians of interleaved rounds, ratios within a round.

Each round times both sides back to back, swapping which goes first every round, so load from other
processes on a shared machine lands on both sides of a ratio alike; the median of the per-round ratios
then ignores the rounds a burst of load hit unevenly.
"""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device: torch.device, inner: int) -> float:
    """Seconds per call of fn, averaged over `inner` back-to-back calls."""
    sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - start) / inner


def median_ratio(fn_ours, fn_ref, device: torch.device, repeats: int, inner: int) -> tuple[float, float, float]:
    """(median ours, median reference, median of per-round ratios ours / reference)."""
    for _ in range(3):  # warm-up: allocator, kernels, autograd graph caches
        fn_ours(), fn_ref()
    ours, ref, ratios = [], [], []
    for round_ in range(repeats):
        if round_ % 2:
            b = seconds_per_call(fn_ref, device, inner)
            a = seconds_per_call(fn_ours, device, inner)
        else:
            a = seconds_per_call(fn_ours, device, inner)
            b = seconds_per_call(fn_ref, device, inner)
        ours.append(a)
        ref.append(b)
        ratios.append(a / b)
    return statistics.median(ours), statistics.median(ref), statistics.median(ratios)

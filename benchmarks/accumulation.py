"""Benchmark: gradient accumulation at a fixed effective batch, k = 1, 2, 4, 8.

    python benchmarks/accumulation.py [--device cpu|cuda] [--effective-batch 32] [--seq-len 64]
                                      [--dim 64] [--layers 4] [--repeats 21] [--threads 1]

One run prints, for each k (micro-batch = effective batch / k):
  time per effective batch   median over `repeats` timed windows (one window = k forward/backward
                             passes + one AdamW step), in interleaved rounds (efftrain_lib.timing):
                             every k once per round, the order rotated every round, so load bursts on
                             a shared machine hit every k alike;
  peak memory                of one window, two sources: the course's meter (CPU: exact accounting of
                             weights, gradients, AdamW state, tensors saved for backward; CUDA: the
                             allocator's max_memory_allocated) and, on CPU, the allocator itself through
                             torch.profiler (which also sees temporaries inside operations);
and three checks with their targets:
  1. activations      peak activation bytes at k / at k=1 <= 1.1 / k   (activations scale with the micro-batch)
  2. equal to accelerate   parameters after 3 windows, ours vs Hugging Face accelerate's accumulate(),
                      max |diff| <= 1e-6 at every k (equal micro-batches: the same computation)
  3. overhead vs accelerate   time per effective batch, ours / accelerate's, median of per-round
                      ratios at k=8 <= 1.05 (the hardened step must not cost more than the reference)
Not part of the test run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from efftrain_lib.timing import interleaved  # noqa: E402  (the shared timing protocol)
from efftrain_lib import data  # noqa: E402
from efftrain_lib.accumulation import accumulation_step, split_batch  # noqa: E402
from efftrain_lib.devices import describe, get_device  # noqa: E402
from efftrain_lib.meter import MIB, MemoryMeter, profiler_peak_bytes  # noqa: E402
from efftrain_lib.models import TinyConfig, TinyTransformer, language_model_loss  # noqa: E402

KS = (1, 2, 4, 8)
ACTIVATION_SLACK = 1.1
EQUAL_TOL = 1e-6
OVERHEAD_TARGET = 1.05


def make_model(args, device) -> TinyTransformer:
    torch.manual_seed(0)
    config = TinyConfig(vocab_size=data.VOCAB_SIZE, hidden_size=args.dim, n_layers=args.layers, n_heads=4,
                        ffn_dim=int(args.dim * 8 / 3 // 4 * 4) or 4, max_seq_len=args.seq_len)
    return TinyTransformer(config).to(device)


def accelerate_runner(model, micro_batches, device):
    """A window through Hugging Face accelerate: Accelerator(gradient_accumulation_steps=k).accumulate()."""
    from accelerate import Accelerator

    accelerator = Accelerator(gradient_accumulation_steps=len(micro_batches), cpu=device.type == "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)

    def window():
        # accelerate keeps k in process-wide shared state (GradientState): set it for this runner each time.
        accelerator.gradient_accumulation_steps = len(micro_batches)
        for x, y in micro_batches:
            with accelerator.accumulate(model):
                accelerator.backward(language_model_loss(model(x), y))
                optimizer.step()
                optimizer.zero_grad()

    return model, window


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--effective-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads (default 1: steadier on a shared machine; 0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.effective_batch % max(KS):
        parser.error(f"--effective-batch must be divisible by {max(KS)}")

    device = get_device(args.device)
    base = make_model(args, device)
    tokens = data.encode(data.load_text("sonnets"))
    get_batch = data.batch_sampler(tokens, args.effective_batch, args.seq_len, seed=0)
    batch = tuple(t.to(device) for t in get_batch(0))
    n_params = sum(p.numel() for p in base.parameters())
    print(f"efftrain accumulation benchmark | {describe(device)}")
    print(f"model: TinyTransformer dim={args.dim} layers={args.layers} ({n_params:,} parameters), AdamW; "
          f"effective batch {args.effective_batch} x {args.seq_len} tokens; {args.repeats} interleaved rounds\n")

    ours, theirs, windows = {}, {}, {}
    peaks, allocator_peaks = {}, {}
    for k in KS:
        windows[k] = split_batch(batch, args.effective_batch // k)
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        accumulation_step(model, optimizer, windows[k])  # warm-up; creates AdamW state
        meter = MemoryMeter()
        accumulation_step(model, optimizer, windows[k], meter=meter)
        peaks[k] = meter.last.peak
        if device.type == "cpu":
            allocator_peaks[k] = profiler_peak_bytes(accumulation_step, model, optimizer, windows[k]).peak_bytes
        ours[k] = (lambda m=model, o=optimizer, w=windows[k]: accumulation_step(m, o, w))
        ref_model, ref_window = accelerate_runner(copy.deepcopy(base), windows[k], device)
        ref_window()  # warm-up
        theirs[k] = ref_window

    runs = {**{(k, "ours"): ours[k] for k in KS}, **{(k, "accelerate"): theirs[k] for k in KS}}
    timings = interleaved(runs, rounds=args.repeats, device=device)
    times = {k: timings.samples[k, "ours"] for k in KS}
    ratios = {k: timings.ratio((k, "ours"), (k, "accelerate")) for k in KS}

    print(f"{'k':>2} {'micro':>5} {'ms / effective batch':>21} {'vs k=1':>7} {'peak (meter)':>13} "
          f"{'activations':>12} {'peak (allocator)':>17}  ours/accelerate")
    base_time = statistics.median(times[1])
    for k in KS:
        t = statistics.median(times[k])
        alloc = f"{allocator_peaks[k] / MIB:13.2f} MiB" if k in allocator_peaks else f"{'n/a':>17}"
        print(f"{k:>2} {args.effective_batch // k:>5} {t * 1e3:18.1f} ms {t / base_time:6.2f}x "
              f"{peaks[k].total / MIB:9.2f} MiB {peaks[k].activations / MIB:8.2f} MiB {alloc}  "
              f"{ratios[k]:.3f}")
    print(f"meter source: {peaks[1].source}")
    if allocator_peaks:
        print("allocator source: torch.profiler (profile_memory=True), bytes above the level at the window's start\n")

    ok = True
    worst = max(peaks[k].activations / peaks[1].activations * k for k in KS)
    passed = worst <= ACTIVATION_SLACK
    ok &= passed
    print(f"1. activations at k / at k=1, times k: worst {worst:.3f} (target <= {ACTIVATION_SLACK})  "
          f"{'PASS' if passed else 'MISS'}")

    diffs = []
    for k in KS:
        a = copy.deepcopy(base)
        oa = torch.optim.AdamW(a.parameters(), lr=1e-3)
        b, window_b = accelerate_runner(copy.deepcopy(base), windows[k], device)
        for _ in range(3):
            accumulation_step(a, oa, windows[k])
            window_b()
        diffs.append(max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())))
    passed = max(diffs) <= EQUAL_TOL
    ok &= passed
    print(f"2. parameters after 3 windows, ours vs accelerate: max |diff| {max(diffs):.1e} over k = {KS} "
          f"(target <= {EQUAL_TOL:g})  {'PASS' if passed else 'MISS'}")

    overhead = ratios[max(KS)]
    passed = overhead <= OVERHEAD_TARGET
    ok &= passed
    print(f"3. time per effective batch at k={max(KS)}, ours / accelerate: {overhead:.3f} "
          f"(target <= {OVERHEAD_TARGET})  {'PASS' if passed else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: our LossScaler against torch.amp.GradScaler, and fp32 against bf16 autocast.

    python benchmarks/loss_scaling.py [--device cpu|cuda] [--repeats 31] [--inner 5]

Prints, each a median over repeated timed rounds in one process (after warm-up):
  1. per-step         a whole training step with the scaler (autocast forward, scaled backward, unscale_,
                       clip, step, update), ours / GradScaler's, on the tiny transformer. Target <= 1.2. On
                       CPU the autocast dtype is bf16 (fp16 matmuls are ~50x slower there); on CUDA fp16.
  2. scaler alone      scale + unscale_ + step (optimizer step a no-op) + update on a model's gradients, ours /
                       GradScaler's: the scaler's own cost, magnified. Two models: the tiny transformer
                       (214,592 parameters in 38 tensors: per-tensor overhead) and a wider one (3.2M
                       parameters: memory bandwidth). Target <= 1.2 for both.
  3. fp32 vs bf16      step time and memory of a training step without autocast and with bf16 autocast:
                       ratio bf16 / fp32 of the median step time, of the peak by the course's meter (exact
                       CPU accounting or the CUDA allocator) and, on CPU, of torch.profiler's allocator peak.
                       Reported, no target (it depends on the hardware).
The two sides of each ratio are timed in alternating order, round by round, so drifts in machine load hit
both alike; the figure is the median of the per-round ratios. Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from efftrain_lib.timing import median_ratio  # noqa: E402  (the shared timing protocol)
from efftrain_lib import data  # noqa: E402
from efftrain_lib.devices import describe, get_device  # noqa: E402
from efftrain_lib.meter import MemoryMeter, profiler_peak_bytes  # noqa: E402
from efftrain_lib.models import TinyConfig, TinyTransformer, language_model_loss, load_pretrained  # noqa: E402
from efftrain_lib.precision import LossScaler, train_step  # noqa: E402

STEP_TARGET = 1.2
# 1 + 2^-10: exact in fp32, and unscaling by it again and again keeps the gradients normal (a scale of 2 would
# drive them into subnormals within ~120 calls, and subnormal arithmetic is slow on CPUs); not 1.0, where
# GradScaler's kernel skips the multiplication.
BENCH_SCALE = 1.0 + 2.0**-10


class NoStepSGD(torch.optim.SGD):
    """An optimizer whose step does nothing: what is timed is the scaler alone."""

    def step(self, closure=None):
        return None


def _model_with_grads(config: TinyConfig | None, device, batch):
    torch.manual_seed(0)
    model = (load_pretrained() if config is None else TinyTransformer(config)).to(device)
    inputs, targets = (t.to(device) for t in batch)
    language_model_loss(model(inputs[:, : model.config.max_seq_len]), targets[:, : model.config.max_seq_len]).backward()
    return model


def scaler_only(scaler, model, device):
    optimizer = NoStepSGD(model.parameters(), lr=0.0)
    loss = torch.tensor(1.0, device=device)

    def run():
        scaler.scale(loss)
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()

    return run


def bench_overhead(config, device, batch, repeats, inner):
    ours_model = _model_with_grads(config, device, batch)
    ref_model = _model_with_grads(config, device, batch)
    kwargs = dict(init_scale=BENCH_SCALE, growth_interval=10**9)
    return median_ratio(scaler_only(LossScaler(**kwargs), ours_model, device),
                        scaler_only(torch.amp.GradScaler(device.type, **kwargs), ref_model, device),
                        device, repeats, inner)


def whole_step(scaler, device, get_batch, dtype):
    torch.manual_seed(0)
    model = load_pretrained().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, targets = (t.to(device) for t in get_batch(0))

    def run():
        train_step(model, optimizer, scaler, inputs, targets, language_model_loss, 1.0, dtype)

    return run


def bench_step(device, get_batch, dtype, repeats, inner):
    kwargs = dict(init_scale=2.0**16, growth_interval=10**9)
    return median_ratio(whole_step(LossScaler(**kwargs), device, get_batch, dtype),
                        whole_step(torch.amp.GradScaler(device.type, **kwargs), device, get_batch, dtype),
                        device, repeats, inner)


def bench_precisions(device, get_batch, repeats, inner):
    """fp32 vs bf16 autocast: (median times, per-round time ratio, meter peaks, profiler peaks)."""
    def setup(dtype):
        torch.manual_seed(0)
        model = load_pretrained().to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        inputs, targets = (t.to(device) for t in get_batch(0))

        def run():
            train_step(model, optimizer, None, inputs, targets, language_model_loss, None, dtype)

        return model, optimizer, inputs, targets, run

    fp32, bf16 = setup(None), setup(torch.bfloat16)
    time_bf16, time_fp32, ratio = median_ratio(bf16[4], fp32[4], device, repeats, inner)
    meter_peaks, profiler_peaks = {}, {}
    for name, (model, optimizer, inputs, targets, run), dtype in (("fp32", fp32, None), ("bf16", bf16, torch.bfloat16)):
        meter = MemoryMeter()  # the step opens the meter's record itself
        train_step(model, optimizer, None, inputs, targets, language_model_loss, None, dtype, meter=meter)
        meter_peaks[name] = meter.last.peak
        profiler_peaks[name] = profiler_peak_bytes(run) if device.type == "cpu" else None
    return (time_fp32, time_bf16, ratio), meter_peaks, profiler_peaks


def report(name: str, result, target: float | None) -> bool:
    ours, ref, ratio = result
    ok = target is None or ratio <= target
    verdict = "(reported)" if target is None else f"(target <= {target:.2f})  {'PASS' if ok else 'MISS'}"
    print(f"{name:<50} ours {ours * 1e3:8.3f} ms  GradScaler {ref * 1e3:8.3f} ms  ratio {ratio:.3f}  {verdict}")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=31, help="timed rounds; the median is reported")
    parser.add_argument("--inner", type=int, default=5, help="calls per timed round")
    parser.add_argument("--batch", default="8x64", help="batch x sequence for training steps (default 8x64)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's). On a loaded machine, 1 avoids the stalls "
                             "of multi-threaded kernels whose threads wait for a descheduled sibling")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = get_device(args.device)
    batch_size, seq_len = (int(n) for n in args.batch.lower().split("x"))
    get_batch = data.batch_sampler(data.encode(data.load_text("founding_documents")), batch_size, seq_len, seed=0)
    step_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    wide = TinyConfig(hidden_size=256, n_layers=4, n_heads=4, ffn_dim=688)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"device: {describe(device)}; load average {load} on {os.cpu_count()} CPUs")
    print(f"each ratio: median of per-round ratios over {args.repeats} rounds of {args.inner} call(s), after warm-up")

    tiny_params = sum(p.numel() for p in load_pretrained().parameters())
    wide_params = sum(p.numel() for p in TinyTransformer(wide).parameters())
    dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[step_dtype]
    ok = report(f"per-step: training step with scaler ({dtype_name}, {args.batch})",
                bench_step(device, get_batch, step_dtype, args.repeats, max(1, args.inner // 5)), STEP_TARGET)
    ok &= report(f"scaler alone, tiny model ({tiny_params:,} params)",
                 bench_overhead(None, device, get_batch(0), args.repeats, args.inner), STEP_TARGET)
    ok &= report(f"scaler alone, wide model ({wide_params:,} params)",
                 bench_overhead(wide, device, get_batch(0), args.repeats, args.inner), STEP_TARGET)

    (t32, t16, ratio), meter_peaks, profiler_peaks = bench_precisions(
        device, get_batch, args.repeats, max(1, args.inner // 5))
    print(f"{'fp32 vs bf16 autocast, step time':<50} fp32 {t32 * 1e3:8.3f} ms  bf16 {t16 * 1e3:8.3f} ms  "
          f"ratio bf16/fp32 {ratio:.3f}  (reported)")
    m32, m16 = meter_peaks["fp32"], meter_peaks["bf16"]
    print(f"{'fp32 vs bf16 autocast, peak memory (meter)':<50} fp32 {m32.total / 2**20:8.3f} MiB  bf16 "
          f"{m16.total / 2**20:8.3f} MiB  ratio {m16.total / m32.total:.3f}  (source: {m32.source.split(':')[0]})")
    for category in ("weights", "optimizer_state", "activations", "cast_weights"):
        a, b = getattr(m32, category), getattr(m16, category)
        print(f"    {category:<18} fp32 {a / 2**20:8.3f} MiB  bf16 {b / 2**20:8.3f} MiB" +
              (f"  ratio {b / a:.3f}" if a else ""))
    if profiler_peaks["fp32"] is not None:
        p32, p16 = profiler_peaks["fp32"].peak_bytes, profiler_peaks["bf16"].peak_bytes
        print(f"{'fp32 vs bf16 autocast, allocator peak':<50} fp32 {p32 / 2**20:8.3f} MiB  bf16 {p16 / 2**20:8.3f} MiB  "
              f"ratio {p16 / p32:.3f}  (source: torch.profiler, bytes above the level at entry)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

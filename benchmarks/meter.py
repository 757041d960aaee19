"""Benchmark: what the memory meter costs a training step.

    python benchmarks/meter.py [--device cpu|cuda] [--repeats 21] [--batch 8]

Every step of a run can be metered (the live memory plots do it), so the meter must stay cheap. One
ratio, timed by the course's shared protocol (efftrain_lib.timing: interleaved rounds, the median of
per-round ratios): one training step of the tiny transformer (AdamW, batch 8 x 64 tokens) under a
MemoryMeter / the same step without one. Target <= 1.6 (saved-tensor hooks and one sample per
released tensor on a ~30 ms step).
Not part of the test run (machines are noisy; tests/test_meter.py checks what the meter records).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from efftrain_lib.devices import describe, get_device, use_one_cpu_thread  # noqa: E402
from efftrain_lib.meter import MemoryMeter  # noqa: E402
from efftrain_lib.models import TinyConfig, TinyTransformer  # noqa: E402
from efftrain_lib.timing import median_ratio  # noqa: E402  (the shared timing protocol)
from efftrain_lib.training import training_step  # noqa: E402

TARGET = 1.6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    device = get_device(args.device)
    use_one_cpu_thread(device)
    torch.manual_seed(0)
    config = TinyConfig()
    model = TinyTransformer(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (args.batch, config.max_seq_len + 1), device=device)
    window = [(ids[:, :-1], ids[:, 1:])]
    meter = MemoryMeter()

    def metered():
        training_step(model, optimizer, window, meter=meter)
        meter.reset()  # keep the records list from growing across rounds

    ours, plain, ratio = median_ratio(metered, lambda: training_step(model, optimizer, window), device,
                                      args.repeats, inner=1)
    print(f"efftrain meter benchmark | {describe(device)}")
    print(f"one step, tiny transformer, batch {args.batch} x {config.max_seq_len}: metered {ours * 1e3:.1f} ms, "
          f"plain {plain * 1e3:.1f} ms")
    passed = ratio <= TARGET
    print(f"1. metered / plain step: {ratio:.3f} (target <= {TARGET})  {'PASS' if passed else 'MISS'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

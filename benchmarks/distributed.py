"""Benchmark: data parallelism and sharding on 2 gloo ranks of this machine.

    python benchmarks/distributed.py [--rounds 15] [--bucket-mb 1.0]

One run starts two ranks (efftrain_lib.launcher) and prints, with their targets:
  1. overlap vs DDP      training-step time of our OverlappedDDP (per parameter and in buckets) over
                         torch's DistributedDataParallel with the same bucket size, median of per-round
                         ratios in interleaved rounds (every rank runs the same order): target <= 1.10
                         for the better of ours; the synchronous baseline and bucketed vs per-parameter
                         are printed beside it
  2. bytes vs formula    bytes this process wrote during one step (the kernel's count, /proc/self/io) over
                         the ring all-reduce formula 2(N-1)/N x gradient bytes: target within 2% (headers)
  3. memory vs estimate  each rank's peak (the course's meter, CPU accounting) for ZeRO-1, ZeRO-2 and
                         fully_shard on a parameter-dominated model, over the estimator's prediction
                         (devices=2, sharding_stage=k): target within 5%; the ZeRO formula beside it
Exit status 1 if a target is missed. Not part of the test run. gloo on CPU only: on GPUs the same code runs
with nccl, but no GPU figures are claimed here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from efftrain_lib import distributed_runs, sharding_runs  # noqa: E402
from efftrain_lib.launcher import WorkerGroup  # noqa: E402
from efftrain_lib.meter import MIB  # noqa: E402
from efftrain_lib.sharding_math import zero_bytes_per_parameter  # noqa: E402

WORLD = 2
SPEED_TARGET = 1.10
BYTES_SLACK = 0.02
MEMORY_SLACK = 0.05


def _mark(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--bucket-mb", type=float, default=1.0, help="bucket size in MiB (ours and DDP's)")
    args = parser.parse_args(argv)
    ok = True
    with WorkerGroup(WORLD, backend="gloo") as group:
        print(f"{WORLD} ranks, gloo on 127.0.0.1, 1 thread each; model {distributed_runs.TIMING_CONFIG}")

        times = group.run(distributed_runs.step_times, rounds=args.rounds, bucket_mb=args.bucket_mb,
                          timeout_s=600)[0]
        print("\n1. step time (median of per-round ratios over torch DistributedDataParallel, rank 0)")
        for wrapper, seconds in times["seconds"].items():
            print(f"   {wrapper:<12} {seconds * 1e3:7.1f} ms   x{times['ratios'][wrapper]:.3f}")
        ours = min(times["ratios"]["overlapped"], times["ratios"]["bucketed"])
        passed = ours <= SPEED_TARGET
        ok &= passed
        bucket_vs_param = times["seconds"]["bucketed"] / times["seconds"]["overlapped"]
        print(f"   bucketed / per-parameter: x{bucket_vs_param:.3f}")
        print(f"   ours (best) / DDP: x{ours:.3f} (target <= {SPEED_TARGET})  {_mark(passed)}")

        wire = group.run(distributed_runs.bytes_per_step, bucket_mb=args.bucket_mb)[0]
        print("\n2. bytes written per step (kernel) vs 2(N-1)/N x gradient bytes")
        for wrapper, row in wire.items():
            ratio = row["wire"] / row["formula"]
            passed = abs(ratio - 1) <= BYTES_SLACK
            ok &= passed
            print(f"   {wrapper:<12} {row['collectives']:3d} collectives  wrote {row['wire']:>10,}  formula "
                  f"{row['formula']:>12,.0f}  x{ratio:.4f} (target 1 +- {BYTES_SLACK})  {_mark(passed)}")

        print("\n3. per-rank peak memory (meter) vs the estimator, fp32 AdamW, "
              f"{sharding_runs.MEMORY_CONFIG.hidden_size}-wide model")
        for stage, name in ((1, "ZeRO-1"), (2, "ZeRO-2"), (3, "fully_shard")):
            for rank, result in enumerate(group.run(sharding_runs.memory_per_rank, stage=stage)):
                measured, predicted = result["measured"]["total"], result["predicted"]["peak"]
                formula = result["predicted"]["total_params"] * zero_bytes_per_parameter(
                    stage, WORLD, weight_bytes=4, grad_bytes=4, optimizer_bytes=8)
                ratio = measured / predicted
                passed = abs(ratio - 1) <= MEMORY_SLACK
                ok &= passed
                print(f"   {name:<12} rank {rank}: {measured / MIB:7.2f} MiB  estimate {predicted / MIB:7.2f}  "
                      f"formula {formula / MIB:7.2f}  x{ratio:.4f} (target 1 +- {MEMORY_SLACK})  {_mark(passed)}")
    print("\nall targets met" if ok else "\nsome targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

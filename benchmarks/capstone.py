"""Benchmark: the capstone's planner and its runs, against their references in the same run.

    python benchmarks/capstone.py [--steps 4] [--repeats 5]

One run prints, with its targets (ratios against a reference measured in the same run):
  1. search     choose_plan's search (plans in order of predicted time, stopping at the first group that fits)
                / brute force (every plan estimated, then sorted), both from a cold estimate cache, at a
                generous, a middle and the tightest budget of the tiny model on 2 devices: <= 0.5 at the
                generous budget (one group estimated instead of ~480 plans), <= 1.1 at any budget (never worse);
                and the same plan (equality, not a ratio)
  2. memory     the tiny model trained under the chosen plan, one process and 2 gloo ranks: each device's
                meter peak / the estimator's peak_bytes and the CPU allocator's peak (torch.profiler) /
                allocator_peak, each within 10%, and the allocator's peak / the budget <= 1.0
  3. time       the chosen plan's measured step time / the plain step's, against step_time's prediction with
                the costs measured in the same run (plan_runs.measure_step_costs): within a factor of 2 (the
                costs are measured on separate plans; this checks they compose)
Not part of the test run. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from efftrain_lib import planner  # noqa: E402
from efftrain_lib.devices import describe, get_device  # noqa: E402
from efftrain_lib.launcher import WorkerGroup  # noqa: E402
from efftrain_lib.meter import MIB  # noqa: E402
from efftrain_lib.plan_runs import build, measure_step_costs, run_in_group, run_plan, tiny_config, window  # noqa: E402
from efftrain_lib.planner import SearchSpace, choose_plan, peak_bytes, plain_plan, step_time  # noqa: E402
from efftrain_lib.timing import interleaved  # noqa: E402
from efftrain_lib.training import training_step  # noqa: E402

SEARCH_GENEROUS, SEARCH_ANY, MEMORY_SLACK, TIME_FACTOR = 0.5, 1.1, 0.10, 2.0
BUDGET = 1.45 * MIB


def line(name: str, value: float, low: float, high: float, detail: str) -> bool:
    ok = low <= value <= high
    target = f"<= {high:g}" if low <= 0 else f"in [{low:g}, {high:g}]"
    print(f"{name:<40} {value:8.3f}  (target {target})  {'PASS' if ok else 'MISS'}  {detail}")
    return ok


def brute_force(model, budget, devices, batch, seq):
    plans = SearchSpace().plans(model, devices=devices, effective_batch=batch, seq_len=seq)
    fitting = [p for p in plans if peak_bytes(p, model) <= budget]
    return min(fitting, key=lambda p: (round(step_time(p, model), 12), len(p.techniques), peak_bytes(p, model)))


def cold(fn):
    planner._estimate.cache_clear()
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def search_checks(repeats: int) -> bool:
    model = tiny_config()
    smallest = planner.minimum_budget(model, 2, 16, seq_len=64)
    fastest = planner.frontier(model, 2, 16, seq_len=64)[0].peak
    ok = True
    for name, budget in (("generous", fastest * 1.1), ("middle", (smallest * fastest) ** 0.5), ("tightest", smallest)):
        ours = [cold(lambda: choose_plan(model, budget, 2, 16, seq_len=64)) for _ in range(repeats)]
        full = [cold(lambda: brute_force(model, budget, 2, 16, 64)) for _ in range(repeats)]
        same = ours[0][0] == full[0][0]
        ratio = sorted(o[1] / f[1] for o, f in zip(ours, full))[repeats // 2]
        target = SEARCH_GENEROUS if name == "generous" else SEARCH_ANY
        ok &= line(f"search / brute force, {name} budget", ratio, 0, target,
                   f"{format(budget / MIB, '.3f')} MiB; same plan: {same}")
        ok &= same
    return ok


def memory_checks(steps: int) -> bool:
    model = tiny_config()
    plan = choose_plan(model, BUDGET, 2, 16, seq_len=64)
    one = replace(plan, devices=1, sharding_stage=0, accumulation_steps=plan.accumulation_steps * 2)
    ok = True
    with WorkerGroup(2, backend="gloo") as group:
        runs = run_in_group(group, plan, steps=steps, budget_bytes=BUDGET)
    for label, run in [("1 process", r) for r in [run_plan(one, steps=steps)]] + [(f"rank {r.rank}", r) for r in runs]:
        ok &= line(f"meter / peak_bytes, {label}", run.meter_peak / run.predicted_peak, 1 - MEMORY_SLACK,
                   1 + MEMORY_SLACK, "CPU accounting vs the estimator's held tensors")
        ok &= line(f"allocator / allocator_peak, {label}", run.allocator_peak / run.predicted_allocator,
                   1 - MEMORY_SLACK, 1 + MEMORY_SLACK, "torch.profiler + resident vs the estimator")
        if label != "1 process":
            ok &= line(f"allocator / budget, {label}", run.allocator_peak / BUDGET, 0, 1.0, plan.describe(4))
    return ok


def time_checks(repeats: int) -> bool:
    model = tiny_config()
    costs, _ = measure_step_costs(rounds=repeats)
    plan = choose_plan(model, BUDGET, 1, 8, seq_len=64, costs=costs)
    steps = {}
    for name, p in (("plan", plan), ("plain", plain_plan(plan))):
        net, optimizer, autocast_dtype = build(p)
        micro_batches = window(p, 0)
        steps[name] = (lambda n=net, o=optimizer, a=autocast_dtype, m=micro_batches:
                       training_step(n, o, m, autocast_dtype=a))
    measured = interleaved(steps, rounds=repeats, reference="plain", warmup=1).ratios["plan"]
    predicted = step_time(plan, model, costs)
    return line("measured / predicted step time", measured / predicted, 1 / TIME_FACTOR, TIME_FACTOR,
                f"{plan.describe(4)}: measured x{measured:.2f}, predicted x{predicted:.2f} (costs measured here)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (>= 2: the allocator is read "
                        "on the second, after the first has created the optimizer state)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps must be >= 2 (the allocator is profiled on step 2), got {args.steps}")
    torch.set_num_threads(args.threads)
    print(describe(get_device()))
    results = [search_checks(args.repeats), memory_checks(args.steps), time_checks(args.repeats)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

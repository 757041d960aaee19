"""Fit a model to a memory budget from a terminal: the plan, its table, and (with --run) the tiny model
trained under it.

    python -m efftrain_lib.fit --budget 24GB --model Llama-2-7B --effective-batch 16 --seq-len 2048
    python -m efftrain_lib.fit --budget 1.45MiB --model tiny --devices 2 --effective-batch 16 --run
    torchrun --nproc-per-node 2 -m efftrain_lib.fit --budget 1.45MiB --model tiny --effective-batch 16 --train

(--train is --run's other name: torchrun's own parser would take --run for an abbreviation of its --run-path.)

It prints the chosen plan (efftrain_lib.planner.choose_plan), the predicted peak per device (the
estimator's allocator peak) and step time (relative to the plain step, with the costs it assumed), and the
table of why each technique is on. --run trains the course's tiny model under the plan (plan_runs.run_plan):
in this process, in spawned ranks (efftrain_lib.launcher) when --devices > 1, or in the ranks torchrun
started (--devices is then the world size). Rank 0 prints each step and, at the end, every device's
measured peaks beside the predictions they compare with.

Exit status: 0 done; 1 nothing fits the budget; 2 bad input; 3 the run went over the budget, or a measured
peak was more than 10% off its prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch.distributed as dist

from efftrain_lib.launcher import WorkerGroup, init_from_environment
from efftrain_lib.memory import PRESETS, shape_of
from efftrain_lib.plan_runs import BudgetExceeded, run_in_group, run_plan, tiny_config
from efftrain_lib.planner import (FINETUNING, NothingFits, SearchSpace, StepCosts, choose_plan, estimate_plan, explain,
                                  format_bytes, parse_budget, step_time)

__all__ = ["MODELS", "TOLERANCE", "main", "model_named", "report_runs"]

TOLERANCE = 0.10  # measured within 10% of the prediction


def _models() -> dict:
    return {"tiny": tiny_config(), **PRESETS}


MODELS = ("tiny",) + tuple(PRESETS)


def model_named(name: str):
    """The model a --model name stands for ("tiny" or a preset; case and spaces do not matter)."""
    wanted = "".join(str(name).lower().split())
    for key, model in _models().items():
        if "".join(key.lower().split()) == wanted:
            return key, model
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m efftrain_lib.fit",
                                     description="Choose the techniques that fit a model to a memory budget per device.")
    parser.add_argument("--budget", required=True, help="memory per device, with its unit: 24GB, 80GiB, 1.45MiB")
    parser.add_argument("--model", default="tiny", help=f"one of: {', '.join(MODELS)}")
    parser.add_argument("--devices", type=int, default=None, help="data-parallel devices (default 1; torchrun: its ranks)")
    parser.add_argument("--effective-batch", type=int, default=8, help="sequences per optimizer step, all devices")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the model's maximum)")
    parser.add_argument("--finetuning", default=",".join(FINETUNING), help="allowed: any of full,lora,qlora")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--mixed-precision-speedup", type=float, default=StepCosts.mixed_precision_speedup)
    parser.add_argument("--dequantize-overhead", type=float, default=StepCosts.dequantize_overhead)
    parser.add_argument("--micro-batch-overhead", type=float, default=StepCosts.micro_batch_overhead)
    parser.add_argument("--communication-share", type=float, default=StepCosts.communication_share)
    parser.add_argument("--run", "--train", dest="run", action="store_true",
                        help="train the tiny model under the plan (needs --model tiny); under torchrun write --train")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of --run")
    parser.add_argument("--json", action="store_true", help="print the plan (and the run's summary) as JSON")
    return parser


def _costs(args) -> StepCosts:
    changed = any(getattr(args, name) != getattr(StepCosts, name) for name in
                  ("mixed_precision_speedup", "dequantize_overhead", "micro_batch_overhead", "communication_share"))
    return StepCosts(args.mixed_precision_speedup, args.dequantize_overhead, args.micro_batch_overhead,
                     args.communication_share, "given on the command line" if changed else StepCosts.source)


def report_runs(runs, budget: float, tolerance: float = TOLERANCE) -> tuple[str, bool]:
    """Each device's measured peaks beside the predictions they compare with; and whether every one is under
    the budget and within `tolerance` of its prediction."""
    lines = [f"{'device':<8} {'meter peak':>12} {'predicted':>12} {'ratio':>6}   "
             f"{'allocator':>12} {'predicted':>12} {'ratio':>6}   under budget"]
    ok = True
    for run in runs:
        meter_ratio = run.meter_peak / run.predicted_peak
        allocator = run.allocator_peak
        measured = allocator if allocator is not None else run.meter_peak
        under = measured <= budget
        row_ok = under and abs(meter_ratio - 1) <= tolerance
        alloc_text = "-"
        if allocator is not None:
            alloc_ratio = allocator / run.predicted_allocator
            row_ok = row_ok and abs(alloc_ratio - 1) <= tolerance
            alloc_text = f"{format_bytes(allocator):>12} {format_bytes(run.predicted_allocator):>12} {alloc_ratio:>6.3f}"
        ok = ok and row_ok
        lines.append(f"rank {run.rank:<3} {format_bytes(run.meter_peak):>12} {format_bytes(run.predicted_peak):>12} "
                     f"{meter_ratio:>6.3f}   {alloc_text}   {'yes' if under else 'NO'}")
    source = runs[0].meter_source
    lines.append(f"meter: {source}; compared with the estimator's "
                 + ("peak_bytes (held tensors)" if "CPU" in source else "allocator_peak"))
    if runs[0].allocator_peak is not None:
        lines.append("allocator: CPU allocator of one step (torch.profiler + what was resident), compared with "
                     "the estimator's allocator_peak")
    return "\n".join(lines), ok


def _print_step(record: dict, budget: float) -> None:
    peaks = ", ".join(format_bytes(p) for p in record["peak_bytes"])
    done = record["step"] + 1
    eta = record["elapsed"] / done * (record["steps"] - done)
    print(f"step {done:>3}/{record['steps']}  loss {record['loss']:.4f}  peak per rank [{peaks}] "
          f"(budget {format_bytes(budget)})  {record['tokens_per_s']:,.0f} tokens/s  ETA {eta:.1f} s", flush=True)


def _plan_text(name, plan, shape, budget, costs) -> str:
    est = estimate_plan(plan, shape)
    lines = [f"Plan for {name}: budget {format_bytes(budget)} per device, {plan.devices} device(s), "
             f"effective batch {plan.effective_batch} x {plan.seq_len} tokens",
             f"  {plan.describe(shape.n_layers)}",
             f"  predicted peak per device {format_bytes(est.allocator_peak)} (allocator, at {est.allocator_phase}); "
             f"held tensors {format_bytes(est.peak_bytes)} (at {est.peak_phase})",
             f"  predicted step time x{step_time(plan, shape, costs):.2f} the plain step (costs {costs.source})"]
    if plan.sharding_stage == 3:
        lines.append("  note: the estimate leaves out FSDP's all-gathered blocks, alive while a block runs "
                     "(ZeRO-3 needs that much more)")
    return "\n".join(lines + ["", explain(plan, shape, budget, costs).to_text()])


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    try:
        budget = parse_budget(args.budget)
        name, model = model_named(args.model)
        shape = shape_of(model)
        world = int(os.environ["WORLD_SIZE"]) if torchrun else None
        devices = args.devices if args.devices is not None else (world or 1)
        if devices < 1:
            raise ValueError(f"--devices must be a positive integer, got {devices}")
        if world is not None and devices != world:
            raise ValueError(f"--devices {devices} but torchrun started {world} rank(s): plan for the ranks you have")
        if args.steps < 1:
            raise ValueError(f"--steps must be a positive integer, got {args.steps}")
        if args.run and name != "tiny":
            raise ValueError(f"--run trains the course's tiny model on this machine: plan {name} without --run, or "
                             "run --model tiny")
        space = SearchSpace(finetuning=tuple(f.strip() for f in args.finetuning.split(",") if f.strip()),
                            lora_rank=args.lora_rank)
        costs = _costs(args)
    except ValueError as error:
        parser.error(str(error))
    rank = int(os.environ.get("RANK", 0))
    try:
        plan = choose_plan(model, budget, devices, args.effective_batch, seq_len=args.seq_len, space=space, costs=costs)
    except NothingFits as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        parser.error(str(error))
    if rank == 0:
        print(json.dumps({"model": name, "budget_bytes": budget, "plan": plan.as_dict(),
                          "predicted_peak": estimate_plan(plan, shape).allocator_peak,
                          "step_time": step_time(plan, shape, costs)}) if args.json
              else _plan_text(name, plan, shape, budget, costs), flush=True)
    if not args.run:
        return 0
    return _run(plan, budget, args, torchrun)


def _run(plan, budget: float, args, torchrun: bool) -> int:
    def show(record):
        if not args.json:
            _print_step(record, budget)

    try:
        if torchrun:
            init_from_environment()
            try:
                runs = [run_plan(plan, steps=args.steps, budget_bytes=budget, on_record=show)]
                gathered = [None] * plan.devices
                dist.all_gather_object(gathered, runs[0])
                runs = gathered
            finally:
                dist.destroy_process_group()
            if int(os.environ["RANK"]) != 0:
                return 0
        elif plan.devices > 1:
            with WorkerGroup(plan.devices, backend="gloo") as group:
                runs = run_in_group(group, plan, steps=args.steps, budget_bytes=budget, on_record=show)
        else:
            runs = [run_plan(plan, steps=args.steps, budget_bytes=budget, on_record=show)]
    except BudgetExceeded as error:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {error}", file=sys.stderr)
        return 3
    text, ok = report_runs(runs, budget)
    if args.json:
        print(json.dumps({"runs": [{"rank": r.rank, "meter_peak": r.meter_peak, "predicted_peak": r.predicted_peak,
                                    "allocator_peak": r.allocator_peak, "predicted_allocator": r.predicted_allocator,
                                    "losses": r.losses} for r in runs], "ok": ok}))
    else:
        print(text)
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())

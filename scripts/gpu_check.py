"""Run every GPU path of the course on a real GPU, in one go, and write what it measured.

    make gpu-check                          # .venv, then this script: benchmarks/results/gpu.md + PNGs
    python scripts/gpu_check.py [--budget 540] [--only memory notebooks] [--out DIR]
    python scripts/gpu_check.py --cpu-selftest [--out DIR]    # no GPU needed: every code path, small
    python scripts/gpu_check.py --list                        # the parts, their time limits, availability

On the project's lent GPU machine (one H200; its image has Python 3.12 with a CUDA torch but no Jupyter,
and it reaches no package index, so `make setup` cannot run there): first, here, `.venv/bin/python
scripts/offline_wheels.py` (the notebook stack as wheels in .whl/, 36 wheels, ~31 MiB), then the device
tool's run with carry [".whl"] and timeout_s 330, this one command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; python3 scripts/gpu_check.py --budget 270; cp benchmarks/results/gpu.md benchmarks/results/gpu_*.png .build/gpu-check/gpu_logs.tar.gz $OUT/

About 4 minutes are expected (wheels ~15 s, the parts ~3 min, the benchmarks what is left); the budget
caps it at 4.5, so a machine's start (1-2 min) and two such runs fit the lease's 15 minutes. Then commit
benchmarks/results/gpu.md and its PNGs (the logs stay out of the repository).

Each part (the registry PARTS below: name, function, time limit) runs in a process of its own, forked
from a server that has torch preloaded, in a process group the runner kills at the part's limit or when
the run's budget is spent; a part that fails, hangs or is killed is reported as such, with what it had
measured by then, and the next part runs. Without a CUDA GPU the script says so, writes nothing, exits 0.
Exit status: 0 when every part that ran passed, 1 when one failed, timed out or missed a target.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the library from this checkout, installed or not
sys.path.insert(0, str(REPO / "scripts"))

import gpu_parts  # noqa: E402  (torch-free at import: the parts import it themselves)
from gpu_parts import Context, Result  # noqa: E402


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    run: Callable[[Context, Result], None]
    timeout_s: float
    needs: tuple[str, ...] = ()  # modules this checkout must have (later chapters), else "not in this checkout"


# The registry, in the order they run (cheap and central first; the benchmarks, which take what is left, last).
# A chapter adds its GPU path in one line.
PARTS = [
    Part("environment", "device, driver and versions", gpu_parts.environment, 60),
    Part("autocast", "CUDA autocast op table vs the Autocast Op Reference", gpu_parts.autocast_table, 60),
    Part("loss_scaler", "LossScaler vs torch.amp.GradScaler, fp16, injected overflows", gpu_parts.loss_scaler, 120),
    Part("equality", "checkpointing vs torch.utils.checkpoint, accumulation vs the big batch", gpu_parts.equality, 60),
    Part("memory", "estimator vs torch.cuda.max_memory_allocated, chapter 0's grid", gpu_parts.memory_estimator, 150),
    Part("liveplot", "the live memory plot fed by the allocator", gpu_parts.live_plot, 60),
    Part("notebooks", "every notebook under nbval", gpu_parts.notebooks, 240),
    Part("qlora", "QLoRA (chapter 6): quantization and gradients on the GPU", gpu_parts.qlora, 60,
         ("efftrain_lib.qlora",)),
    Part("distributed", "data parallelism (chapter 5) over nccl", gpu_parts.distributed, 120,
         ("efftrain_lib.launcher", "efftrain_lib.distributed_runs")),
    Part("benchmarks", "benchmarks/*.py --device cuda", gpu_parts.benchmarks, 300),
]

#: What `make test` sets (Makefile's TEST_ENV), for a run started without make: tool state inside the
#: checkout, static live plots, quiet profiler, fixed hashing in the notebooks' kernels.
BUILD = REPO / ".build"
ENV_DEFAULTS = {"MPLCONFIGDIR": BUILD / "mpl", "IPYTHONDIR": BUILD / "ipython",
                "JUPYTER_CONFIG_DIR": BUILD / "jupyter/config", "JUPYTER_DATA_DIR": BUILD / "jupyter/data",
                "JUPYTER_RUNTIME_DIR": BUILD / "jupyter/runtime", "HF_HOME": BUILD / "hf",
                "EFFTRAIN_DRILL_PROGRESS": BUILD / "drill_progress.json", "KINETO_LOG_LEVEL": 6,
                "EFFTRAIN_LIVEPLOT": "static", "PYTHONHASHSEED": 0}
REPORT = "gpu.md"


# ----------------------------------------------------------------------------------------------
# Running one part
# ----------------------------------------------------------------------------------------------


def _child(run: Callable[[Context, Result], None], ctx: Context, result_path: str, log_path: str) -> None:
    """In the part's process: its own process group (killed whole at the limit), output to its log."""
    os.setpgid(0, 0)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    result = Result(result_path)
    result.save()
    try:
        run(ctx, result)
        if result.status == "running":
            result.status = "ok"
    except BaseException:  # noqa: BLE001 - every failure is the part's report, not the runner's crash
        result.status, result.error = "failed", traceback.format_exc()
    result.save()
    sys.stdout.flush()


def _kill_group(process) -> None:
    """The part's process and everything it started (a pytest, its kernels), finished or not."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone (or never formed): the process alone
        process.kill()
    process.join()


def _log_tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


def missing_modules(part: Part) -> list[str]:
    """The modules `part` needs that this checkout lacks (looked up as files: an installed copy of the library
    elsewhere does not count)."""
    return [module for module in part.needs
            if not any((REPO / (module.replace(".", "/") + suffix)).exists() for suffix in (".py", "/__init__.py"))]


def run_part(part: Part, ctx: Context, work: Path, seconds: float) -> dict:
    """Run `part` within `seconds` in a process of its own; its result as a dict, with its time."""
    missing = missing_modules(part)
    if missing:
        return _not_run(part, "not in this checkout", f"needs {', '.join(missing)}, which this checkout does not have")
    if seconds < 5:
        return _not_run(part, "not run", "the run's time budget was spent before this part")
    result_path, log_path = work / f"{part.name}.json", work / f"{part.name}.log"
    result_path.unlink(missing_ok=True)
    ctx = replace(ctx, deadline=time.time() + seconds)
    process = multiprocessing.get_context("forkserver").Process(
        target=_child, args=(part.run, ctx, str(result_path), str(log_path)), name=f"gpu-check {part.name}")
    start = time.monotonic()
    process.start()
    try:
        process.join(seconds)
    finally:
        timed_out = process.is_alive()
        _kill_group(process)  # at the limit, or after the part: nothing it started may run into the next part
    result = json.loads(result_path.read_text()) if result_path.exists() else asdict(Result(str(result_path)))
    if timed_out:
        result["status"] = "timeout"
        result["error"] = f"killed at its limit of {seconds:.0f} s; last lines of its log:\n{_log_tail(log_path)}"
    elif result["status"] == "running":  # the process died without a word (a crash in native code, a signal)
        result["status"] = "failed"
        result["error"] = f"the process ended with exit code {process.exitcode}; its log:\n{_log_tail(log_path)}"
    result.update(name=part.name, title=part.title, seconds=time.monotonic() - start, limit_s=seconds)
    return result


def _not_run(part: Part, status: str, reason: str) -> dict:
    return dict(asdict(Result(path="", status=status, notes=[reason])), name=part.name, title=part.title,
                seconds=0.0, limit_s=0.0)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _verdicts(result: dict) -> tuple[int, int]:
    verdicts = [f["verdict"] for f in result["figures"]]
    return verdicts.count("PASS"), verdicts.count("MISS")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(columns: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def write_report(path: Path, results: list[dict], *, selftest: bool, command: str, budget: float,
                 seconds: float) -> None:
    info = results[0].get("info", {}) if results else {}
    device = info.get("device", "?")
    if selftest:
        lines = ["# GPU check: CPU self-test", "",
                 "No GPU: every part that can run on a CPU ran small, to exercise the code paths, this report and "
                 "its figures. **No figure here is a GPU measurement.**", ""]
    else:
        lines = ["# GPU check: every GPU path of the course, measured", "",
                 f"Measured on **{device}** (compute capability {info.get('capability', '?')}, "
                 f"{info.get('memory_gib', '?')} GiB, {info.get('gpus', '?')} GPU(s), "
                 f"driver {info.get('driver', '?')}). "
                 "The notebooks may quote this file as \"measured on " + device + "\".", ""]
    lines += [f"- torch {info.get('torch', '?')}, CUDA build {info.get('cuda_build', '?')}, cuDNN "
              f"{info.get('cudnn', '-')}, Python {info.get('python', '?')}; peft {info.get('peft', '?')}, "
              f"transformers {info.get('transformers', '?')}, nbval {info.get('nbval', '?')}",
              f"- `{command}`: {seconds:.0f} s in all (budget {budget:.0f} s), on {time.strftime('%Y-%m-%d')}",
              "- written by `scripts/gpu_check.py` (`make gpu-check`); each part ran in its own process with its own "
              "time limit", ""]
    rows = []
    for r in results:
        passed, missed = _verdicts(r)
        rows.append([r["name"], r["title"], r["status"], passed, missed, f"{r['seconds']:.1f} s",
                     f"{r['limit_s']:.0f} s" if r["limit_s"] else "-"])
    lines += _md_table(["part", "what", "status", "PASS", "MISS", "took", "limit"], rows) + [""]
    for r in results:
        lines += [f"## {r['name']}: {r['title']}", "", f"Status: **{r['status']}**, {r['seconds']:.1f} s.", ""]
        if r["figures"]:
            lines += _md_table(["figure", "value", "target", "verdict"],
                               [[f["name"], f["value"], f["target"], f["verdict"]] for f in r["figures"]]) + [""]
        for table in r["tables"]:
            lines += [f"{table['title']}:", ""] + _md_table(table["columns"], table["rows"]) + [""]
        for note in r["notes"]:
            lines += (["```", note, "```", ""] if "\n" in note else [note, ""])
        if r.get("error"):
            lines += ["```", r["error"].strip()[-3000:], "```", ""]
        lines += [f"![{name}]({name})" for name in r["files"]] + ([""] if r["files"] else [])
    path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the report's folder (default benchmarks/results; the self-test: "
                                                  "a new temporary folder)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run (default 540)")
    parser.add_argument("--only", nargs="+", choices=[p.name for p in PARTS[1:]], help="run only these parts")
    parser.add_argument("--cpu-selftest", action="store_true", help="no GPU needed: every part that can run on "
                        "a CPU, small; the notebooks and benchmarks only named")
    parser.add_argument("--list", action="store_true", help="list the parts and exit")
    return parser.parse_args(argv)


def _print_parts() -> None:
    for part in PARTS:
        missing = missing_modules(part)
        where = f"  (not in this checkout: needs {', '.join(missing)})" if missing else ""
        print(f"{part.name:<12} {part.timeout_s:>4.0f} s  {part.title}{where}")


def main(argv=None) -> int:
    args = _arguments(argv)
    if args.list:
        _print_parts()
        return 0
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, str(value))
    # The notebooks' kernels and the benchmarks import the library from this checkout too.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.cpu_selftest
                       else REPO / "benchmarks" / "results")
    work = out / "work" if args.cpu_selftest else BUILD / "gpu-check"
    work.mkdir(parents=True, exist_ok=True)
    multiprocessing.get_context("forkserver").set_forkserver_preload(gpu_parts.PRELOAD)
    start, deadline = time.monotonic(), time.monotonic() + args.budget
    ctx = Context(device="cpu" if args.cpu_selftest else "cuda", small=args.cpu_selftest,
                  list_only=args.cpu_selftest, repo=str(REPO), out=str(out), logs=str(work), deadline=0.0)
    environment = run_part(PARTS[0], ctx, work, PARTS[0].timeout_s)
    if environment["status"] != "ok":  # not even torch could say what this machine has
        print(f"The environment probe {environment['status']}: {environment.get('error', '')}", file=sys.stderr)
        return 1
    info = environment["info"]
    if not info["cuda_available"] and not args.cpu_selftest:
        print(f"No CUDA GPU here ({info['device']}, torch {info['torch']}): nothing ran and {out / REPORT} is left "
              "as it was. Run `make gpu-check` on a machine with an NVIDIA GPU, or `python scripts/gpu_check.py "
              "--cpu-selftest` to exercise the script here.")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("gpu_*.png"):  # a figure a part does not redraw this time must not be committed as new
        stale.unlink()
    results = [environment]
    print(f"gpu-check on {info['device']}: results in {out / REPORT}", flush=True)
    try:
        for part in PARTS[1:]:
            if args.only and part.name not in args.only:
                continue
            print(f"  {part.name} ...", end=" ", flush=True)
            result = run_part(part, ctx, work, min(part.timeout_s, deadline - time.monotonic() - 5))
            passed, missed = _verdicts(result)
            print(f"{result['status']} in {result['seconds']:.0f} s ({passed} PASS, {missed} MISS)", flush=True)
            results.append(result)
    except KeyboardInterrupt:
        print("interrupted: writing what ran", flush=True)
    command = "python scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(out / REPORT, results, selftest=args.cpu_selftest, command=command.strip(), budget=args.budget,
                 seconds=time.monotonic() - start)
    with tarfile.open(work / "gpu_logs.tar.gz", "w:gz") as tar:
        for log in sorted(work.glob("*.log")):
            tar.add(log, arcname=log.name)
    print(f"report: {out / REPORT}; logs: {work / 'gpu_logs.tar.gz'}")
    bad = [r["name"] for r in results if r["status"] in ("failed", "timeout") or _verdicts(r)[1]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

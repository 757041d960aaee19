"""The GPU check (scripts/gpu_check.py, `make gpu-check`) without a GPU, so that it cannot rot between GPU runs.

* its CPU self-test runs every part that can run on a CPU, small (the notebooks and benchmarks only named),
  and writes a report and figures of the GPU run's structure;
* without a GPU the check says so, exits 0 and writes nothing;
* a part that hangs is killed at its limit with its subprocesses, a part that raises or dies is reported,
  and what a part measured before it was stopped is kept;
* nbval's output is read with and without pytest-xdist.
The self-test takes ~10 s on 2 idle cores (one torch import, then forked parts).
"""

from __future__ import annotations

import gc
import importlib.util
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # the part processes find _child by this name
spec.loader.exec_module(gpu_check)
gpu_parts = sys.modules["gpu_parts"]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu-selftest", "--out", str(out)],
                         capture_output=True, text=True, timeout=240)
    return run, out, (out / "gpu.md").read_text() if (out / "gpu.md").exists() else ""


def _summary_rows(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in {p.name for p in gpu_check.PARTS} and len(cells) == 7:
            rows[cells[0]] = cells
    return rows


def test_cpu_selftest_runs_every_part_it_can_and_writes_the_report(selftest):
    run, out, report = selftest
    assert run.returncode == 0, run.stdout + run.stderr
    assert report.startswith("# GPU check: CPU self-test") and "No figure here is a GPU measurement" in report
    rows = _summary_rows(report)
    assert list(rows) == [p.name for p in gpu_check.PARTS], "one summary row per registered part, in order"
    for name in ("environment", "autocast", "loss_scaler", "equality", "memory", "liveplot"):
        assert rows[name][2] == "ok" and rows[name][4] == "0", rows[name]  # ran, no MISS
    assert int(rows["autocast"][3]) >= 1 and int(rows["loss_scaler"][3]) >= 2 and int(rows["equality"][3]) >= 3
    assert rows["notebooks"][2] == rows["benchmarks"][2] == "listed"
    for name in ("qlora", "distributed"):  # run only where the chapter's modules exist; no nccl on a CPU
        assert rows[name][2] in ("not in this checkout", "not run", "ok"), rows[name]
    assert "## notebooks" in report and "pytest notebooks --nbval-lax --nbval-current-env" in report
    assert "benchmarks/meter.py --device cuda" in report
    for section in ("## autocast", "## loss_scaler", "## memory"):
        assert section in report
    assert "| figure | value | target | verdict |" in report
    for png in ("gpu_liveplot.png", "gpu_loss_scale.png", "gpu_memory_estimator.png"):
        assert (out / png).read_bytes()[:8] == PNG, png
        assert f"![{png}]({png})" in report
    assert not [line for line in report.splitlines() if line.endswith("| MISS |")], "a figure missed its target"


# Parts that misbehave, run by the runner as a real part would be (in a process of their own).
def _hang(ctx, result):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    result.note(f"child {child.pid}")
    result.figure("measured before the hang", 42)
    time.sleep(600)


def _raise(ctx, result):
    result.figure("measured before the error", 1)
    raise RuntimeError("a part that breaks")


def _die(ctx, result):
    os._exit(3)  # as a crash in native code would: no word


def _stopped(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # gone, or a zombie no one has reaped yet


def test_a_part_that_hangs_is_killed_with_its_subprocesses_and_keeps_what_it_measured(tmp_path):
    ctx = gpu_parts.Context("cpu", True, True, str(ROOT), str(tmp_path), str(tmp_path), 0.0)
    start = time.monotonic()
    result = gpu_check.run_part(gpu_check.Part("hang", "hangs", _hang, 60), ctx, tmp_path, seconds=6)
    assert time.monotonic() - start < 30
    assert result["status"] == "timeout" and "killed at its limit of 6 s" in result["error"]
    assert result["figures"][0]["value"] == "42"
    pid = int(result["notes"][0].split()[-1])
    deadline = time.monotonic() + 10
    while not _stopped(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stopped(pid), "the part's subprocess outlived it"


def test_a_part_that_raises_or_dies_is_reported_and_the_next_runs(tmp_path):
    ctx = gpu_parts.Context("cpu", True, True, str(ROOT), str(tmp_path), str(tmp_path), 0.0)
    raised = gpu_check.run_part(gpu_check.Part("raise", "raises", _raise, 60), ctx, tmp_path, seconds=30)
    assert raised["status"] == "failed" and "RuntimeError: a part that breaks" in raised["error"]
    assert raised["figures"][0]["name"] == "measured before the error"
    died = gpu_check.run_part(gpu_check.Part("die", "dies", _die, 60), ctx, tmp_path, seconds=30)
    assert died["status"] == "failed" and "exit code 3" in died["error"]
    missing = gpu_check.run_part(gpu_check.Part("later", "a later chapter", _die, 60, ("efftrain_lib.no_such",)),
                                 ctx, tmp_path, seconds=30)
    assert missing["status"] == "not in this checkout" and "efftrain_lib.no_such" in missing["notes"][0]
    spent = gpu_check.run_part(gpu_check.Part("late", "after the budget", _die, 60), ctx, tmp_path, seconds=1)
    assert spent["status"] == "not run"


def test_nbval_outcomes_are_read_with_and_without_xdist():
    plain = ("notebooks/00_memory_anatomy::ipynb::Cell 0 PASSED   [ 25%]\n"
             "notebooks/00_memory_anatomy::ipynb::Cell 1 FAILED   [ 50%]\n"
             "FAILED notebooks/00_memory_anatomy.ipynb::Cell 1 - Notebook cell execution failed\n")
    xdist = ("[gw1] [ 75%] PASSED notebooks/01_lora::ipynb::Cell 0 \n"
             "[gw0] [100%] ERROR notebooks/01_lora::ipynb::Cell 1 \n")
    assert gpu_parts.nbval_outcomes(plain + xdist) == {"00_memory_anatomy": {"PASSED": 1, "FAILED": 1},
                                                       "01_lora": {"PASSED": 1, "ERROR": 1}}


# The CUDA-only branches, run here on made-up CUDA readings: the arithmetic and verdicts a GPU run relies on.
def test_cuda_autocast_verdicts_tell_a_gap_in_the_page_from_a_wrong_dtype(tmp_path, monkeypatch):
    import torch

    from efftrain_lib import precision

    header = gpu_parts.header_lists()
    if header is None:
        pytest.skip("this torch ships no ATen/autocast_mode.h")
    ops = list(precision.autocast_op_dtypes("cpu"))
    registered = {kind: {op for op in ops if gpu_parts.HEADER_NAMES.get(op, op) in names}
                  for kind, names in header.items()}
    wrong = set()

    def fake_cuda(device, dtype, input_dtype):  # what CUDA autocast does by this torch's registration lists
        assert device == "cuda"
        return {op: torch.float16 if op in wrong else gpu_parts.expected_dtype(registered, op, dtype, input_dtype)
                for op in ops}

    monkeypatch.setattr(precision, "autocast_op_dtypes", fake_cuda)
    ctx = gpu_parts.Context("cuda", False, False, str(ROOT), str(tmp_path), str(tmp_path), time.time() + 60)
    as_registered = gpu_parts.Result(str(tmp_path / "a.json"))
    gpu_parts.autocast_table(ctx, as_registered)
    assert [f["verdict"] for f in as_registered.figures] == ["PASS", "PASS"]
    assert any("scaled_dot_product_attention" in n for n in as_registered.notes)  # registered, not on the page
    wrong.add("softmax")  # fp32 by the page and by the registration: a real discrepancy
    regressed = gpu_parts.Result(str(tmp_path / "b.json"))
    gpu_parts.autocast_table(ctx, regressed)
    assert [f["verdict"] for f in regressed.figures] == ["MISS", "MISS"]


def test_cuda_memory_rows_separate_rounding_and_workspaces_from_the_estimate(tmp_path, monkeypatch):
    import types

    import torch

    from efftrain_lib import memory_validation
    from efftrain_lib.memory import estimate_training_memory

    workspace, rounding, seen = 32 * 2**20, 6 * 512, []

    def fake_step(config, **settings):  # the allocator's reading: the estimate exactly, plus what a GPU adds
        seen.append(settings)
        peak = estimate_training_memory(config, **settings).allocator_peak + workspace + rounding
        fake_step.requested = peak - rounding
        return types.SimpleNamespace(peak=types.SimpleNamespace(total=peak))

    monkeypatch.setattr(memory_validation, "measure_training_step", fake_step)
    monkeypatch.setattr(gc, "collect", lambda: 0)  # nothing to collect here, and slow in a big test process
    monkeypatch.setattr(gpu_parts, "_cuda_warm_up", lambda: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: workspace)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda *a: {"requested_bytes.all.peak": fake_step.requested})
    ctx = gpu_parts.Context("cuda", False, False, str(ROOT), str(tmp_path), str(tmp_path), time.time() + 60)
    result = gpu_parts.Result(str(tmp_path / "m.json"))
    gpu_parts.memory_estimator(ctx, result)
    grid = memory_validation.validation_grid()
    assert len(seen) > len(grid) and {s["precision"] for s in seen[len(grid):]} == {"fp16_autocast"}
    (table,) = result.tables
    assert len(table["rows"]) == len(seen)
    row = table["rows"][-1]
    assert row[2] == f"{rounding / 2**20:.3f} MiB" and row[3] == "32.000 MiB" and row[7] == "+0.00%"
    assert float(row[6].rstrip("%")) < 0  # against the raw peak the workspace makes the estimate look low
    verdicts = {f["name"]: f["verdict"] for f in result.figures}
    assert verdicts["configurations above 8 MiB (net) within 5% of the estimate"] == "PASS"
    assert (tmp_path / "gpu_memory_estimator.png").read_bytes()[:8] == PNG


def test_the_registry_names_each_part_once_and_probes_the_device_first():
    names = [p.name for p in gpu_check.PARTS]
    assert names[0] == "environment" and len(set(names)) == len(names)
    default_budget = gpu_check._arguments([]).budget
    assert all(callable(p.run) and 0 < p.timeout_s < default_budget for p in gpu_check.PARTS)


# Last: main() in this process (the parts it would start are patched away).
def test_without_a_gpu_the_check_says_so_exits_0_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # main() sets the make test variables for its children
    probe = {"status": "ok", "info": {"cuda_available": False, "device": "CPU (x86_64, 2 cores)", "torch": "2.13.0"}}
    monkeypatch.setattr(gpu_check, "run_part", lambda part, ctx, work, seconds: probe)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "No CUDA GPU here" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
    multiprocessing.get_context("forkserver").set_forkserver_preload([])  # main() set torch's preload: undo

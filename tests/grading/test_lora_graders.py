"""Proof that the Chapter 1 (LoRA) graders grade correctly.

- the reference solutions pass every check;
- the pristine stubs fail every check, as stubs (nbgrader's `validate --invert`);
- every mistake in tests/grading/mistakes/lora/ is caught by the checks it names, with a message that
  names the mistake (each mistake file declares CAUGHT_BY = {check: [words the message must contain]});
- every check is proven by at least one mistake (a check no mistake trips is untested);
- the CLI: exit 0 on the solutions, non-zero on the stubs, --json parses, a hanging implementation is
  reported as timed out.
Tiny shapes and PEFT imported once: the whole file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import efftrain_lib.grading.lora as lora_graders
from efftrain_lib.grade import DEFAULT_TIMEOUT_S, grade, load_module

ROOT = Path(__file__).resolve().parents[2]
MISTAKES = sorted((ROOT / "tests" / "grading" / "mistakes" / "lora").glob("*.py"))
CHECK_IDS = [f"{c.exercise} {c.name}" for c in lora_graders.CHECKS]
HANG = ROOT / "tests" / "grading" / "mistakes" / "lora" / "hangs_in_merge.py"


def _by_id(report, check_id):
    (result,) = [r for r in report.results if f"{r.exercise} {r.check}" == check_id]
    return result


@pytest.fixture(scope="module")
def solution_report():
    return grade("lora", ROOT / "solutions")


@pytest.fixture(scope="module")
def stub_report():
    return grade("lora", ROOT / "exercises")


def test_every_exercise_has_checks():
    assert {c.exercise for c in lora_graders.CHECKS} == {"1.1", "1.2", "1.3", "1.4"}
    assert len(CHECK_IDS) == len(set(CHECK_IDS))


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_solution_passes(solution_report, check_id):
    result = _by_id(solution_report, check_id)
    assert result.passed, f"{result.status}: {result.detail} | hint: {result.hint}"


def test_solution_report_says_so(solution_report):
    assert solution_report.all_passed
    assert solution_report.summary().startswith(f"All {len(CHECK_IDS)} checks passed")


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_stub_fails(stub_report, check_id):
    result = _by_id(stub_report, check_id)
    assert not result.passed
    assert result.status == "stub"
    assert result.detail.startswith("not implemented yet (stub): Exercise 1.")
    assert "notebooks/01_lora.ipynb" in result.detail


def test_catalog_has_enough_mistakes():
    assert len(MISTAKES) >= 8


def _caught_by(path: Path) -> dict:
    return load_module(path).CAUGHT_BY


@pytest.mark.parametrize("path", MISTAKES, ids=lambda p: p.stem)
def test_mistake_is_caught(path):
    module = load_module(path)
    report = grade("lora", path, timeout=getattr(module, "GRADE_TIMEOUT", DEFAULT_TIMEOUT_S))
    assert not report.all_passed, f"{path.stem} passes every check: a grader is missing"
    assert module.CAUGHT_BY, "a mistake must name the checks that catch it"
    names = {r.check for r in report.results}
    for check_name, words in module.CAUGHT_BY.items():
        assert check_name in names, f"{path.stem}: no check called {check_name!r}"
        (result,) = [r for r in report.results if r.check == check_name]
        assert not result.passed, f"{path.stem} passes {check_name!r}: {result.detail}"
        message = f"{result.detail} {result.hint}".lower()
        missing = [w for w in words if w.lower() not in message]
        assert not missing, f"{path.stem}: {check_name!r} says {message!r}, without {missing}"
    for result in report.results:
        if not result.passed:  # every failure comes with a pointer to the likely mistake
            assert result.hint, f"{path.stem}: {result.check!r} failed without a hint: {result.detail}"
            assert "Traceback" not in result.detail


def test_every_check_is_proven_by_a_mistake():
    proven = {name for path in MISTAKES for name in _caught_by(path)}
    unproven = [c.name for c in lora_graders.CHECKS if c.name not in proven]
    assert not unproven, f"checks that no mistake in the catalog trips: {unproven}"


# ------------------------------------------------------------------------------------------ CLI --
def _cli(*args, timeout=120):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "efftrain_lib.grade", "lora", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def test_cli_solutions_exit_zero():
    proc, _ = _cli("--impl", "solutions")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    assert f"All {len(CHECK_IDS)} checks passed" in proc.stdout
    assert "1.1" in proc.stdout and "1.4" in proc.stdout  # the per-exercise table


def test_cli_stubs_exit_nonzero_and_json_parses():
    proc, _ = _cli("--json")  # default --impl exercises
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["chapter"] == "lora" and data["impl"] == "exercises/lora.py"
    assert data["all_passed"] is False and data["passed"] == 0 and data["total"] == len(CHECK_IDS)
    assert {r["status"] for r in data["results"]} == {"stub"}
    assert set(data["results"][0]) >= {"exercise", "check", "passed", "status", "detail", "hint"}


def test_cli_reports_a_hang_as_timed_out():
    proc, wall = _cli("--impl", str(HANG.relative_to(ROOT)), "--exercise", "1.2", "--timeout", "0.5", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["total"] == 3 and {r["status"] for r in data["results"]} == {"timeout"}
    assert all("timed out after 0.5 s" in r["detail"] for r in data["results"])
    assert wall < 30  # 3 checks x (0.5 s + 0.5 s grace), plus starting Python, torch and PEFT


def test_every_check_has_a_default_hint():
    # Shown when learner code raises inside the check instead of returning a failure.
    assert all(c.hint for c in lora_graders.CHECKS), [c.name for c in lora_graders.CHECKS if not c.hint]

"""Proof that the Chapter 0 (memory_math) graders grade correctly.

- the reference solutions and the library's hardened versions (efftrain_lib/memory.py) pass every check;
- the pristine stubs fail every check, as stubs;
- every mistake in tests/grading/mistakes/memory_math/ is caught by the checks it names, with a message
  naming the mistake (CAUGHT_BY = {check: [words the message must contain]});
- every check is proven by at least one mistake;
- the CLI: exit 0 on the solutions, 1 on the stubs, --json parses.
Pure arithmetic: the whole file runs in a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import efftrain_lib.grading.memory_math as graders
from efftrain_lib.grade import grade, load_module

ROOT = Path(__file__).resolve().parents[2]
MISTAKES = sorted((ROOT / "tests" / "grading" / "mistakes" / "memory_math").glob("*.py"))
CHECK_IDS = [f"{c.exercise} {c.name}" for c in graders.CHECKS]


def _by_id(report, check_id):
    (result,) = [r for r in report.results if f"{r.exercise} {r.check}" == check_id]
    return result


@pytest.fixture(scope="module")
def solution_report():
    return grade("memory_math", ROOT / "solutions")


@pytest.fixture(scope="module")
def stub_report():
    return grade("memory_math", ROOT / "exercises")


def test_every_exercise_has_checks():
    assert {c.exercise for c in graders.CHECKS} == {"0.1", "0.2", "0.3"}
    assert len(CHECK_IDS) == len(set(CHECK_IDS))
    assert all(c.hint for c in graders.CHECKS)


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_solution_passes(solution_report, check_id):
    result = _by_id(solution_report, check_id)
    assert result.passed, f"{result.status}: {result.detail} | hint: {result.hint}"


def test_the_library_passes_too():
    report = grade("memory_math", ROOT / "efftrain_lib" / "memory.py")
    assert report.all_passed, [(r.check, r.detail) for r in report.results if not r.passed]


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_stub_fails(stub_report, check_id):
    result = _by_id(stub_report, check_id)
    assert result.status == "stub"
    assert result.detail.startswith("not implemented yet (stub): Exercise 0.")
    assert "notebooks/00_memory_anatomy.ipynb" in result.detail


def test_catalog_has_enough_mistakes():
    assert len(MISTAKES) >= 15
    stems = {p.stem for p in MISTAKES}
    # the classics the issue names
    assert {"adam_one_state", "master_weights_forgotten", "lora_counted_dkr"} <= stems


@pytest.mark.parametrize("path", MISTAKES, ids=lambda p: p.stem)
def test_mistake_is_caught(path):
    module = load_module(path)
    report = grade("memory_math", path)
    assert not report.all_passed, f"{path.stem} passes every check: a grader is missing"
    names = {r.check for r in report.results}
    for check_name, words in module.CAUGHT_BY.items():
        assert check_name in names, f"{path.stem}: no check called {check_name!r}"
        (result,) = [r for r in report.results if r.check == check_name]
        assert not result.passed, f"{path.stem} passes {check_name!r}: {result.detail}"
        message = f"{result.detail} {result.hint}".lower()
        missing = [w for w in words if w.lower() not in message]
        assert not missing, f"{path.stem}: {check_name!r} says {message!r}, without {missing}"
    for result in report.results:
        if not result.passed:
            assert result.status == "fail", f"{path.stem}: {result.check!r} {result.status}: {result.detail}"
            assert result.hint and "Traceback" not in result.detail


def test_every_check_is_proven_by_a_mistake():
    proven = {name for path in MISTAKES for name in load_module(path).CAUGHT_BY}
    unproven = [c.name for c in graders.CHECKS if c.name not in proven]
    assert not unproven, f"checks that no mistake in the catalog trips: {unproven}"


def _cli(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "efftrain_lib.grade", "memory_math", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_solutions_exit_zero_and_stubs_one():
    ok = _cli("--impl", "solutions")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"All {len(CHECK_IDS)} checks passed" in ok.stdout
    bad = _cli("--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    data = json.loads(bad.stdout)
    assert data["impl"] == "exercises/memory_math.py" and data["passed"] == 0
    assert {r["status"] for r in data["results"]} == {"stub"}

"""Proof that the Chapter 4 (gradient accumulation) graders grade correctly.

- the reference solutions and the library (efftrain_lib/accumulation.py) pass every check;
- the pristine stubs fail every check, as stubs (nbgrader's `validate --invert`);
- every mistake in tests/grading/mistakes/accumulation/ fails exactly the checks it declares, each with a
  message that names the mistake (each mistake file declares CAUGHT_BY = {check: [words the message must
  contain]}; words may be empty for a check that only sees the mistake's consequences, e.g. the end-to-end
  training check);
- every check is proven by at least one mistake; every failure carries a hint;
- the CLI: exit 0 on the solutions, 1 on the stubs, --json parses.
The graders use a token-wise MLP of a few hundred parameters: the whole file runs in seconds.
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import efftrain_lib.grading.accumulation as accumulation_graders
from efftrain_lib.grade import grade, load_module

ROOT = Path(__file__).resolve().parents[2]
MISTAKES = sorted((ROOT / "tests" / "grading" / "mistakes" / "accumulation").glob("*.py"))
CHECK_IDS = [f"{c.exercise} {c.name}" for c in accumulation_graders.CHECKS]
NOTEBOOK = "notebooks/04_gradient_accumulation.ipynb"


def _by_id(report, check_id):
    (result,) = [r for r in report.results if f"{r.exercise} {r.check}" == check_id]
    return result


@pytest.fixture(scope="module")
def solution_report():
    return grade("accumulation", ROOT / "solutions")


@pytest.fixture(scope="module")
def library_report():
    return grade("accumulation", ROOT / "efftrain_lib")


@pytest.fixture(scope="module")
def stub_report():
    return grade("accumulation", ROOT / "exercises")


def test_every_exercise_has_checks():
    assert {c.exercise for c in accumulation_graders.CHECKS} == {"4.1", "4.2"}
    assert len(CHECK_IDS) == len(set(CHECK_IDS))


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_solution_passes(solution_report, check_id):
    result = _by_id(solution_report, check_id)
    assert result.passed, f"{result.status}: {result.detail} | hint: {result.hint}"


def test_the_library_passes_every_check(library_report):
    failures = [(r.exercise, r.check, r.detail) for r in library_report.results if not r.passed]
    assert library_report.all_passed, f"efftrain_lib/accumulation.py fails the graders: {failures}"


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_stub_fails(stub_report, check_id):
    result = _by_id(stub_report, check_id)
    assert not result.passed
    assert result.status == "stub"
    assert result.detail.startswith("not implemented yet (stub): Exercise 4.")
    assert NOTEBOOK in result.detail


def test_catalog_has_enough_mistakes():
    assert len(MISTAKES) >= 6


@pytest.mark.parametrize("path", MISTAKES, ids=lambda p: p.stem)
def test_mistake_is_caught(path):
    module = load_module(path)
    with warnings.catch_warnings():
        # scheduler_per_micro_batch makes torch warn that the scheduler stepped before the optimizer
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        report = grade("accumulation", path)
    assert not report.all_passed, f"{path.stem} passes every check: a grader is missing"
    assert module.CAUGHT_BY, "a mistake must name the checks that catch it"
    names = {r.check for r in report.results}
    # Exactly the declared checks fail: a check that fails a mistake it was not written for is reported here
    # too, so the catalog documents every check each mistake trips (and none passes by accident).
    failing = {r.check for r in report.results if not r.passed}
    assert failing == set(module.CAUGHT_BY), (
        f"{path.stem}: undeclared failures {sorted(failing - set(module.CAUGHT_BY))}, "
        f"declared but passing {sorted(set(module.CAUGHT_BY) - failing)}")
    for check_name, words in module.CAUGHT_BY.items():
        assert check_name in names, f"{path.stem}: no check called {check_name!r}"
        (result,) = [r for r in report.results if r.check == check_name]
        assert not result.passed, f"{path.stem} passes {check_name!r}: {result.detail}"
        assert result.status == "fail", f"{path.stem}: {check_name!r} {result.status}: {result.detail}"
        message = f"{result.detail} {result.hint}".lower()
        missing = [w for w in words if w.lower() not in message]
        assert not missing, f"{path.stem}: {check_name!r} says {message!r}, without {missing}"
    for result in report.results:
        if not result.passed:  # every failure comes with a pointer to the likely mistake
            assert result.hint, f"{path.stem}: {result.check!r} failed without a hint: {result.detail}"
            assert "Traceback" not in result.detail


def test_every_check_is_proven_by_a_mistake():
    proven = {name for path in MISTAKES for name in load_module(path).CAUGHT_BY}
    unproven = [c.name for c in accumulation_graders.CHECKS if c.name not in proven]
    assert not unproven, f"checks that no mistake in the catalog trips: {unproven}"


def test_the_issue_s_classic_mistakes_are_in_the_catalog():
    stems = {p.stem for p in MISTAKES}
    assert {"loss_not_divided", "mean_of_means", "partial_window_divided_by_k", "zero_grad_inside_window",
            "scheduler_per_micro_batch", "scaler_update_per_micro_batch"} <= stems


def test_every_check_has_a_default_hint():
    assert all(c.hint for c in accumulation_graders.CHECKS)


# ------------------------------------------------------------------------------------------ CLI --
def _cli(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "efftrain_lib.grade", "accumulation", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_solutions_exit_zero_and_stubs_exit_one():
    ok = _cli("--impl", "solutions")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"All {len(CHECK_IDS)} checks passed" in ok.stdout
    stubs = _cli("--json")
    assert stubs.returncode == 1, stubs.stdout + stubs.stderr
    data = json.loads(stubs.stdout)
    assert data["impl"] == "exercises/accumulation.py" and data["passed"] == 0
    assert {r["status"] for r in data["results"]} == {"stub"}

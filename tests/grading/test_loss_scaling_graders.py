"""Proof that the Chapter 3 (loss scaling) graders grade correctly.

- the reference solutions and the library's hardened LossScaler (efftrain_lib/precision.py) pass every check;
- the pristine stubs fail every check, as stubs;
- every mistake in tests/grading/mistakes/loss_scaling/ is caught by the checks it names, with a message that
  names the mistake (each mistake file declares CAUGHT_BY = {check: [words the message must contain]});
- every check is proven by at least one mistake;
- the CLI exits 0 on the solutions and 1 on the stubs.
The graders compare with torch.amp.GradScaler("cpu") on tiny models: the file runs in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import efftrain_lib.grading.loss_scaling as graders
from efftrain_lib.grade import DEFAULT_TIMEOUT_S, grade, load_module

ROOT = Path(__file__).resolve().parents[2]
MISTAKES = sorted((ROOT / "tests" / "grading" / "mistakes" / "loss_scaling").glob("*.py"))
CHECK_IDS = [f"{c.exercise} {c.name}" for c in graders.CHECKS]


def _by_id(report, check_id):
    (result,) = [r for r in report.results if f"{r.exercise} {r.check}" == check_id]
    return result


@pytest.fixture(scope="module")
def solution_report():
    return grade("loss_scaling", ROOT / "solutions")


@pytest.fixture(scope="module")
def library_report():
    return grade("loss_scaling", ROOT / "efftrain_lib" / "precision.py")


@pytest.fixture(scope="module")
def stub_report():
    return grade("loss_scaling", ROOT / "exercises")


def test_every_exercise_has_checks():
    assert {c.exercise for c in graders.CHECKS} == set(graders.EXERCISES) == {"3.1", "3.2", "3.3", "3.4", "3.5", "3.6"}
    assert len(CHECK_IDS) == len(set(CHECK_IDS))


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_solution_passes(solution_report, check_id):
    result = _by_id(solution_report, check_id)
    assert result.passed, f"{result.status}: {result.detail} | hint: {result.hint}"


def test_library_passes_every_check(library_report):
    # One source of truth: the hardened LossScaler and train_step meet the same graders.
    failures = [(r.exercise, r.check, r.detail) for r in library_report.results if not r.passed]
    assert library_report.all_passed, failures


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_stub_fails(stub_report, check_id):
    result = _by_id(stub_report, check_id)
    assert not result.passed
    assert result.status == "stub"
    assert result.detail.startswith("not implemented yet (stub): Exercise 3.")
    assert "notebooks/03_mixed_precision.ipynb" in result.detail


def test_catalog_has_enough_mistakes():
    assert len(MISTAKES) >= 6
    # The list, by name.
    for name in ("tracker_not_reset_on_overflow", "growth_counts_overflow_steps", "step_on_inf",
                 "clip_before_unscale", "unscale_twice_silently", "step_unscales_again", "scale_grows_to_inf",
                 "seed_grad_scaler"):
        assert (ROOT / "tests" / "grading" / "mistakes" / "loss_scaling" / f"{name}.py").exists(), name


@pytest.mark.parametrize("path", MISTAKES, ids=lambda p: p.stem)
def test_mistake_is_caught(path):
    module = load_module(path)
    report = grade("loss_scaling", path, timeout=getattr(module, "GRADE_TIMEOUT", DEFAULT_TIMEOUT_S))
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
        if not result.passed:
            assert result.hint, f"{path.stem}: {result.check!r} failed without a hint: {result.detail}"
            assert "Traceback" not in result.detail


def test_every_check_is_proven_by_a_mistake():
    proven = {name for path in MISTAKES for name in load_module(path).CAUGHT_BY}
    unproven = [c.name for c in graders.CHECKS if c.name not in proven]
    assert not unproven, f"checks that no mistake in the catalog trips: {unproven}"


def test_every_check_has_a_default_hint():
    assert all(c.hint for c in graders.CHECKS), [c.name for c in graders.CHECKS if not c.hint]


def test_diagnosis_tells_the_wrong_rules_apart():
    # On the "consecutive" check's script every classic rule gives its own trajectory, so the hint names it.
    pattern = "FFIFFFFFNFFF"
    trajectories = [tuple(graders._simulate(pattern, rule)) for rule in ["correct", *graders._RULES]]
    assert len(set(trajectories)) == len(trajectories)
    for rule in graders._RULES:
        assert graders._diagnose(pattern, graders._simulate(pattern, rule)) == rule


def _cli(*args, timeout=180):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "efftrain_lib.grade", "loss_scaling", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_solutions_pass_and_stubs_fail():
    proc = _cli("--impl", "solutions")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"All {len(CHECK_IDS)} checks passed" in proc.stdout
    proc = _cli("--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["impl"] == "exercises/loss_scaling.py" and data["passed"] == 0 and data["total"] == len(CHECK_IDS)

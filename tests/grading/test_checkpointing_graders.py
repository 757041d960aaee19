"""Proof that the Chapter 2 (gradient checkpointing) graders grade correctly.

- the reference solutions and the library pass every check;
- the pristine stubs fail every check, as stubs (nbgrader's `validate --invert`);
- every mistake in tests/grading/mistakes/checkpointing/ is caught by the checks it names, with a message
  that names the mistake (each mistake file declares CAUGHT_BY = {check: [words the message must contain]});
- every check is proven by at least one mistake (a check no mistake trips is untested);
- the CLI: exit 0 on the solutions, non-zero on the stubs, --json parses.
Tiny shapes: a whole grade takes well under a second on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import efftrain_lib.grading.checkpointing as ckpt_graders
from efftrain_lib.grade import DEFAULT_TIMEOUT_S, grade, load_module

ROOT = Path(__file__).resolve().parents[2]
MISTAKES = sorted((ROOT / "tests" / "grading" / "mistakes" / "checkpointing").glob("*.py"))
CHECK_IDS = [f"{c.exercise} {c.name}" for c in ckpt_graders.CHECKS]


def _by_id(report, check_id):
    (result,) = [r for r in report.results if f"{r.exercise} {r.check}" == check_id]
    return result


@pytest.fixture(scope="module")
def solution_report():
    return grade("checkpointing", ROOT / "solutions")


@pytest.fixture(scope="module")
def stub_report():
    return grade("checkpointing", ROOT / "exercises")


def test_every_exercise_has_checks():
    assert {c.exercise for c in ckpt_graders.CHECKS} == {"2.1", "2.2"}
    assert len(CHECK_IDS) == len(set(CHECK_IDS)) >= 15
    # mistakes name the checks they trip by name alone: names must be unique across exercises
    assert len({c.name for c in ckpt_graders.CHECKS}) == len(ckpt_graders.CHECKS)


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_solution_passes(solution_report, check_id):
    result = _by_id(solution_report, check_id)
    assert result.passed, f"{result.status}: {result.detail} | hint: {result.hint}"


def test_solution_report_says_so(solution_report):
    assert solution_report.all_passed
    assert solution_report.summary().startswith(f"All {len(CHECK_IDS)} checks passed")


def test_the_library_passes_too():
    report = grade("checkpointing", ROOT / "efftrain_lib")
    assert report.all_passed, [(r.check, r.detail) for r in report.results if not r.passed]


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_stub_fails(stub_report, check_id):
    result = _by_id(stub_report, check_id)
    assert not result.passed
    assert result.status == "stub"
    assert result.detail.startswith("not implemented yet (stub): Exercise 2.")
    assert "notebooks/02_gradient_checkpointing.ipynb" in result.detail


def test_catalog_has_the_classic_mistakes():
    names = {p.stem for p in MISTAKES}
    # The list: RNG not restored, recompute without grad enabled, parameter gradients lost,
    # inputs not detached before recompute, forward that keeps its graph anyway; and more.
    assert {"rng_not_restored", "recompute_without_grad", "param_grads_lost", "inputs_not_detached",
            "forward_keeps_graph", "all_inputs_require_grad"} <= names
    assert len(MISTAKES) >= 12


def _caught_by(path: Path) -> dict:
    return load_module(path).CAUGHT_BY


@pytest.mark.parametrize("path", MISTAKES, ids=lambda p: p.stem)
def test_mistake_is_caught(path):
    module = load_module(path)
    report = grade("checkpointing", path, timeout=getattr(module, "GRADE_TIMEOUT", DEFAULT_TIMEOUT_S))
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
    unproven = [c.name for c in ckpt_graders.CHECKS if c.name not in proven]
    assert not unproven, f"checks that no mistake in the catalog trips: {unproven}"


def test_every_check_has_a_default_hint():
    assert all(c.hint for c in ckpt_graders.CHECKS), [c.name for c in ckpt_graders.CHECKS if not c.hint]


# ------------------------------------------------------------------------------------------ CLI --
def _cli(*args, timeout=120):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "efftrain_lib.grade", "checkpointing", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_solutions_exit_zero():
    proc = _cli("--impl", "solutions")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and f"All {len(CHECK_IDS)} checks passed" in proc.stdout
    assert "Exercise 2.1: checkpoint" in proc.stdout and "Exercise 2.2: checkpoint_sequential" in proc.stdout


def test_cli_stubs_exit_nonzero_and_json_parses():
    proc = _cli("--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["impl"] == "exercises/checkpointing.py" and data["passed"] == 0
    assert {r["status"] for r in data["results"]} == {"stub"}

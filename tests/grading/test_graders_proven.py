"""Proof that every chapter's graders grade correctly, run over the chapters the test_<chapter>_graders.py
files describe (their `PROOF`; what only one chapter needs is tested in its own file):

- the reference solutions, and the library's hardened version, pass every check;
- the pristine stubs fail every check, as stubs (nbgrader's `validate --invert`), pointing to the notebook;
- every mistake in tests/grading/mistakes/<chapter>/ is caught by the checks it names, with a message that
  names the mistake (each mistake file declares CAUGHT_BY = {check: [words the message must contain]});
  where the chapter says so, it fails exactly those checks, and every failure is a plain "fail";
- every check is proven by at least one mistake (a check no mistake trips is untested); every failure
  carries a hint, and every check a default hint (shown when learner code raises inside the check);
- every check function is named for what it checks (never `_`, unique in its chapter);
- the CLI: exit 0 on the solutions, 1 on the stubs, --json parses.
One chapter's proof alone: `pytest tests/grading -k lora`; one check's: `-k output_equals_base_at_init`.
"""

from __future__ import annotations

import functools
import inspect
import json

import pytest
import test_accumulation_graders
import test_capstone_graders
import test_checkpointing_graders
import test_distributed_graders
import test_lora_graders
import test_loss_scaling_graders
import test_memory_math_graders
import test_qlora_graders
from grader_proofs import ROOT, ChapterProof, by_id, cli, grade_mistake

from efftrain_lib.grade import Report, grade, load_module
from efftrain_lib.grading import CHAPTERS as REGISTERED

PROOFS: list[ChapterProof] = [m.PROOF for m in (test_memory_math_graders, test_lora_graders,
                                                 test_checkpointing_graders, test_loss_scaling_graders,
                                                 test_accumulation_graders, test_distributed_graders,
                                                 test_qlora_graders, test_capstone_graders)]
# ids name the check function: `pytest tests/grading -k output_equals_base_at_init` selects its proofs
CHECK_CASES = [pytest.param(c, f"{check.exercise} {check.name}", id=f"{c}-{check.exercise}-{check.function}")
               for c in PROOFS for check in c.graders.CHECKS]
MISTAKE_CASES = [pytest.param(c, path, id=f"{c}-{path.stem}") for c in PROOFS for path in c.mistakes]
per_chapter = pytest.mark.parametrize("chapter", PROOFS, ids=str)


@functools.cache
def _report(chapter: str, impl: str) -> Report:
    """One grade per chapter and implementation, shared by the tests that read it."""
    return grade(chapter, ROOT / impl)


def test_every_registered_chapter_is_proven():
    assert sorted(c.name for c in PROOFS) == sorted(REGISTERED)


@per_chapter
def test_every_exercise_has_checks(chapter):
    graders = chapter.graders
    assert {c.exercise for c in graders.CHECKS} == set(graders.EXERCISES) == chapter.exercises
    assert len(chapter.check_ids) == len(set(chapter.check_ids)) >= chapter.min_checks
    # mistakes name the checks they trip by name alone: names must be unique across exercises
    assert len({c.name for c in graders.CHECKS}) == len(graders.CHECKS)


@per_chapter
def test_every_check_function_is_named_for_what_it_checks(chapter):
    # A failure's traceback and `pytest -k` name the check by its function: `_` tells nothing, and two
    # checks sharing a name would leave only the last one reachable by it in the module.
    graders = chapter.graders
    functions = [check.function for check in graders.CHECKS]
    assert "_" not in functions, [c.name for c in graders.CHECKS if c.function == "_"]
    assert len(set(functions)) == len(functions), sorted(f for f in functions if functions.count(f) > 1)
    for check in graders.CHECKS:
        # the module's name for it is this very check (not a helper or a later check that shadows it)
        defined = getattr(graders, check.function, None)
        assert defined is not None and inspect.unwrap(defined) is inspect.unwrap(check.func), (
            f"{chapter.name}.{check.function} is not the check {check.exercise} {check.name!r}")


@pytest.mark.parametrize("chapter, check_id", CHECK_CASES)
def test_solution_passes(chapter, check_id):
    result = by_id(_report(chapter.name, "solutions"), check_id)
    assert result.passed, f"{result.status}: {result.detail} | hint: {result.hint}"


@per_chapter
def test_solution_report_says_so(chapter):
    report = _report(chapter.name, "solutions")
    assert report.all_passed
    assert report.summary().startswith(f"All {len(chapter.check_ids)} checks passed")
    # nothing printed, at import or in a check (a warning would show here: the checks run in a child
    # process, which reports what it prints with each check)
    assert report.output == "" and [r.output for r in report.results if r.output] == []


@pytest.mark.parametrize("chapter", [c for c in PROOFS if c.library], ids=str)
def test_the_library_passes_every_check(chapter):
    # One source of truth: the library's hardened version meets the same graders as the reference solution.
    report = _report(chapter.name, chapter.library)
    failures = [(r.exercise, r.check, r.detail) for r in report.results if not r.passed]
    assert len(report.results) == len(chapter.check_ids), (
        f"the {chapter.name} grader should run its whole catalog of checks")
    assert report.all_passed, f"{report.impl} fails the {chapter.name} graders: {failures}"


@pytest.mark.parametrize("chapter, check_id", CHECK_CASES)
def test_stub_fails(chapter, check_id):
    result = by_id(_report(chapter.name, "exercises"), check_id)
    assert not result.passed
    assert result.status == "stub"
    assert result.detail.startswith(f"not implemented yet (stub): Exercise {chapter.number}.")
    assert chapter.notebook in result.detail


@per_chapter
def test_catalog_has_enough_mistakes(chapter):
    assert len(chapter.mistakes) >= chapter.min_mistakes
    stems = {p.stem for p in chapter.mistakes}
    # the classics the chapter's issue names
    assert chapter.classics <= stems, f"missing from {chapter.mistakes_dir}: {sorted(chapter.classics - stems)}"


@pytest.mark.parametrize("chapter, path", MISTAKE_CASES)
def test_mistake_is_caught(chapter, path):
    module, report = grade_mistake(chapter, path)
    assert not report.all_passed, f"{path.stem} passes every check: a grader is missing"
    assert module.CAUGHT_BY, "a mistake must name the checks that catch it"
    names = {r.check for r in report.results}
    if chapter.exact_failures:
        # Exactly the declared checks fail: a check that fails a mistake it was not written for is reported
        # here too, so the catalog documents every check each mistake trips (and none passes by accident).
        failing = {r.check for r in report.results if not r.passed}
        assert failing == set(module.CAUGHT_BY), (
            f"{path.stem}: undeclared failures {sorted(failing - set(module.CAUGHT_BY))}, "
            f"declared but passing {sorted(set(module.CAUGHT_BY) - failing)}")
    for check_name, words in module.CAUGHT_BY.items():
        assert check_name in names, f"{path.stem}: no check called {check_name!r}"
        (result,) = [r for r in report.results if r.check == check_name]
        assert not result.passed, f"{path.stem} passes {check_name!r}: {result.detail}"
        message = f"{result.detail} {result.hint}".lower()
        missing = [w for w in words if w.lower() not in message]
        assert not missing, f"{path.stem}: {check_name!r} says {message!r}, without {missing}"
    for result in report.results:
        if not result.passed:  # every failure comes with a pointer to the likely mistake
            if chapter.failures_are_fails:
                assert result.status == "fail", f"{path.stem}: {result.check!r} {result.status}: {result.detail}"
            assert result.hint, f"{path.stem}: {result.check!r} failed without a hint: {result.detail}"
            assert "Traceback" not in result.detail


@per_chapter
def test_every_check_is_proven_by_a_mistake(chapter):
    proven = {name for path in chapter.mistakes for name in load_module(path).CAUGHT_BY}
    unproven = [c.name for c in chapter.graders.CHECKS if c.name not in proven]
    assert not unproven, f"checks that no mistake in the catalog trips: {unproven}"


@per_chapter
def test_every_check_has_a_default_hint(chapter):
    # Shown when learner code raises inside the check instead of returning a failure.
    checks = chapter.graders.CHECKS
    assert all(c.hint for c in checks), [c.name for c in checks if not c.hint]


# ------------------------------------------------------------------------------------------ CLI --
@per_chapter
def test_cli_solutions_exit_zero(chapter):
    proc, _ = cli(chapter.name, "--impl", "solutions", timeout=chapter.cli_timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    assert f"All {len(chapter.check_ids)} checks passed" in proc.stdout
    # the per-exercise table, and what else the chapter expects to see
    expected = [f"-- Exercise {e}" for e in sorted(chapter.exercises)] + list(chapter.cli_shows)
    missing = [text for text in expected if text not in proc.stdout]
    assert not missing, f"{missing} not in the output:\n{proc.stdout}"


@per_chapter
def test_cli_stubs_exit_one_and_json_parses(chapter):
    proc, _ = cli(chapter.name, "--json", timeout=chapter.cli_timeout)  # default --impl exercises
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["chapter"] == chapter.name and data["impl"] == f"exercises/{chapter.name}.py"
    assert data["all_passed"] is False and data["passed"] == 0 and data["total"] == len(chapter.check_ids)
    assert {r["status"] for r in data["results"]} == {"stub"}
    assert set(data["results"][0]) >= {"exercise", "check", "passed", "status", "detail", "hint"}

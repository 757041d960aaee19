"""The grading harness itself (efftrain_lib/grade.py), independent of any chapter's graders:
loading by path, error/stub/timeout reporting, the notebook `check()`, the report renderings,
chapter registration. A throwaway "demo" chapter (tests/grading/demo_grader.py, the `demo` fixture in
conftest.py) stands in for a chapter's grader module. What the learner's code must not be able to do to
the grader (hang it, kill it, garble its output) is tested in test_grade_survives_learner_code.py."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import write_demo as _write

import efftrain_lib.grade as harness
from efftrain_lib.grade import DEFAULT_TIMEOUT_S, Report, check, default_timeout, grade, main, resolve_impl
from efftrain_lib.grading import CHAPTERS

ROOT = Path(__file__).resolve().parents[2]


def test_pass_fail_stub_statuses(demo):
    impl = _write(demo / "a", "def add(a, b):\n    return a - b\n\n"
                              "def mul(a, b):\n    raise NotImplementedError('Exercise 9.2: mul')\n")
    report = grade("demo", impl)
    add, mul = report.results
    assert (add.status, add.passed) == ("fail", False)
    assert add.detail == "add(2, 3) = -1, expected 5" and add.hint == "a + b"
    assert mul.status == "stub" and mul.detail == "not implemented yet (stub): Exercise 9.2: mul"
    assert not report.all_passed and report.n_passed == 0


def test_exceptions_are_reported_with_type_message_and_line(demo):
    impl = _write(demo / "b", "def add(a, b):\n    return a + b\n\n"
                              "def mul(a, b):\n    raise ValueError('boom')\n")
    report = grade("demo", impl)
    add, mul = report.results
    assert add.passed
    assert mul.status == "error"
    assert mul.detail == "ValueError: boom (demo.py line 5, in mul)"
    assert mul.hint == "mul(a, b) returns a * b"  # the check's default hint
    assert "Traceback" not in report.to_text()


def test_unloadable_file_fails_every_check(demo):
    impl = _write(demo / "c", "def add(a, b)\n    return a + b\n")
    report = grade("demo", impl)
    assert [r.status for r in report.results] == ["error", "error"]
    assert all("could not load" in r.detail and "SyntaxError" in r.detail and "line 1" in r.detail
               for r in report.results)


def test_missing_file_is_reported_not_raised(demo):
    report = grade("demo", demo / "nowhere")
    assert not report.all_passed
    assert all("no such file" in r.detail for r in report.results)


def test_single_file_and_exercise_filter(demo):
    impl = _write(demo / "d", "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n")
    report = grade("demo", impl / "demo.py", exercise="9.2")
    assert [r.exercise for r in report.results] == ["9.2"] and report.all_passed
    with pytest.raises(ValueError):
        grade("demo", impl, exercise="9.9")


def test_fresh_module_each_grade_sees_edits(demo):
    impl = _write(demo / "e", "def add(a, b):\n    return 0\n\ndef mul(a, b):\n    return a * b\n")
    assert not grade("demo", impl).all_passed
    _write(impl, "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n")
    assert grade("demo", impl).all_passed  # no stale import cache


def test_report_renderings(demo):
    impl = _write(demo / "f", "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a + b\n")
    report = grade("demo", impl)
    text = report.to_text()
    assert "-- Exercise 9.1: add" in text and "PASS" in text and "FAIL" in text
    assert "hint: a * b" in text
    assert "1/2 checks passed" in text and "First failing check: 9.2 mul works" in text
    html = report._repr_html_()
    assert "<table" in html and "mul(2, 3) = 5, expected 6" in html and "<th" in html
    data = json.loads(report.to_json())
    assert data["passed"] == 1 and data["total"] == 2 and data["results"][1]["hint"] == "a * b"


def test_cli_exit_status(demo, capsys):
    good = _write(demo / "g", "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n")
    bad = _write(demo / "h", "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return 0\n")
    assert main(["demo", "--impl", str(good)]) == 0
    assert "All 2 checks passed" in capsys.readouterr().out
    assert main(["demo", "--impl", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["all_passed"] is False


def test_unknown_chapter_and_missing_grader(monkeypatch):
    with pytest.raises(harness.GraderNotFound, match="unknown chapter"):
        grade("no_such_chapter")
    later = harness.Chapter("later", None, "Later", grader="efftrain_lib.grading._not_written_yet")
    monkeypatch.setitem(CHAPTERS, "later", later)
    with pytest.raises(harness.GraderNotFound, match="no graders yet"):
        grade("later")
    assert main(["later"]) == 2


def test_a_grader_the_child_cannot_import_is_refused_clearly(monkeypatch):
    # The checks run in a child process that imports the grader by name: a module object made in memory
    # (as a notebook might) cannot be graded, and the error says why instead of failing every check.
    monkeypatch.setitem(sys.modules, "_grader_in_memory", types.ModuleType("_grader_in_memory"))
    monkeypatch.setitem(CHAPTERS, "in_memory", harness.Chapter("in_memory", None, "In memory", grader="_grader_in_memory",
                                                                filename="x.py"))
    with pytest.raises(harness.GraderNotFound, match="has no file.*child process"):
        grade("in_memory")


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "soon", True])  # None: the chapter default
def test_timeout_must_be_a_finite_number_of_seconds(demo, timeout):
    with pytest.raises(ValueError, match=r"timeout must be a finite number of seconds > 0"):
        grade("demo", demo, timeout=timeout)


@pytest.mark.parametrize("timeout", ["0", "-2", "inf", "nan", "soon"])
def test_cli_refuses_a_timeout_that_is_not_finite_and_positive(demo, capsys, timeout):
    with pytest.raises(SystemExit) as stopped:
        main(["demo", "--impl", str(demo), "--timeout", timeout])
    assert stopped.value.code == 2
    assert "--timeout: timeout must be a finite number of seconds > 0" in capsys.readouterr().err


def test_registered_chapters_name_their_files():
    assert CHAPTERS["lora"].filename == "lora.py"
    assert CHAPTERS["lora"].grader == "efftrain_lib.grading.lora"
    for name in ("checkpointing", "loss_scaling", "accumulation", "memory_math"):
        assert CHAPTERS[name].filename == f"{name}.py"


# -------------------------------------------------------------------------- notebook `check()` --
def test_check_from_the_notebooks_directory(monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")
    assert resolve_impl("lora") == (ROOT / "exercises" / "lora.py").resolve()
    report = check("lora", exercise="1.4")  # the stubs: must not raise
    assert isinstance(report, Report) and not report.all_passed
    assert report.impl == "exercises/lora.py"
    assert "not implemented yet" in report.summary()
    assert "First failing check: 1.4" in report._repr_html_()
    ok = check("lora", "solutions", exercise="1.4")
    assert ok.all_passed and "Well done" in repr(ok)


def test_check_accepts_absolute_paths():
    report = check("lora", ROOT / "solutions" / "lora.py", exercise="1.4")
    assert report.all_passed


def test_grading_does_not_disturb_the_callers_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check("lora", "solutions", exercise="1.1")
    assert torch.equal(torch.rand(3), expected)


def test_a_chapter_may_ask_for_a_longer_default_timeout():
    # The distributed grader's first check starts two ranks (a fresh Python importing torch each): on a
    # loaded machine that alone passed the 10 s default and failed correct code as "timed out".
    assert default_timeout("lora") == DEFAULT_TIMEOUT_S == 10.0
    assert default_timeout("ddp") == default_timeout("distributed") == 30.0
    with pytest.raises(ValueError, match="finite number of seconds > 0"):
        grade("distributed", "solutions", timeout=0)

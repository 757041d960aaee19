"""The grading harness itself (efftrain_lib/grade.py), independent of any chapter's graders:
loading by path, error/stub/timeout reporting, the notebook `check()`, the report renderings,
chapter registration. A throwaway "demo" chapter stands in for a later chapter's grader module."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

import efftrain_lib.grade as harness
from efftrain_lib.grade import Report, check, grade, main, resolve_impl
from efftrain_lib.grading import CHAPTERS, Checks, failed, passed

ROOT = Path(__file__).resolve().parents[2]
HANG = ROOT / "tests" / "grading" / "mistakes" / "lora" / "hangs_in_merge.py"


# ------------------------------------------------------------------- a demo chapter (fake grader) --
@pytest.fixture
def demo(monkeypatch, tmp_path):
    """Register chapter "demo": grader module `_demo_grader`, graded file demo.py."""
    checks = Checks()

    @checks.add("9.1", "add works", hint="add(a, b) returns a + b")
    def _(impl):
        got = impl.add(2, 3)
        return passed("add(2, 3) == 5") if got == 5 else failed(f"add(2, 3) = {got}, expected 5", "a + b")

    @checks.add("9.2", "mul works", hint="mul(a, b) returns a * b")
    def _(impl):
        got = impl.mul(2, 3)
        return passed("mul(2, 3) == 6") if got == 6 else failed(f"mul(2, 3) = {got}, expected 6", "a * b")

    grader = types.ModuleType("_demo_grader")
    grader.CHECKS = checks
    grader.EXERCISES = {"9.1": "add", "9.2": "mul"}
    monkeypatch.setitem(sys.modules, "_demo_grader", grader)
    monkeypatch.setitem(CHAPTERS, "demo", harness.Chapter("demo", None, "Demo", grader="_demo_grader"))
    return tmp_path


def _write(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "demo.py").write_text(text)
    return directory


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


def test_registered_chapters_name_their_files():
    assert CHAPTERS["lora"].filename == "lora.py"
    assert CHAPTERS["lora"].grader == "efftrain_lib.grading.lora"
    for name in ("checkpointing", "loss_scaling", "accumulation", "memory_math"):
        assert CHAPTERS[name].filename == f"{name}.py"


# ---------------------------------------------------------------------------------- timeouts --
def test_hanging_check_times_out_and_its_thread_is_stopped():
    before = {t.ident for t in threading.enumerate()}
    start = time.perf_counter()
    report = grade("lora", HANG, exercise="1.2", timeout=0.5)
    elapsed = time.perf_counter() - start
    assert [r.status for r in report.results] == ["timeout"] * 3
    assert all(r.detail.startswith("timed out after 0.5 s") for r in report.results)
    assert elapsed < 3 * (0.5 + 0.5) + 2  # timeout + grace per check, plus slack
    # The busy loop was interrupted inside its thread (async CheckTimeout), not left spinning.
    deadline = time.time() + 5
    while time.time() < deadline:
        left = [t for t in threading.enumerate() if t.ident not in before and t.name == "efftrain-grade-check"]
        if not left:
            break
        time.sleep(0.05)
    assert not left


def test_learner_code_cannot_swallow_the_timeout(tmp_path):
    # A bare `except Exception` in learner code must not keep a timed-out check alive.
    code = ("import time\n"
            "def spin():\n"
            "    while True:\n"
            "        try:\n"
            "            time.sleep(0.01)\n"
            "        except Exception:\n"
            "            pass\n")
    path = tmp_path / "spin.py"
    path.write_text(code)
    module = harness.load_module(path)
    kind, _ = harness._run_in_thread(module.spin, 0.3)
    assert kind == "timeout"
    deadline = time.time() + 5
    while time.time() < deadline and any(t.name == "efftrain-grade-check" for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.name == "efftrain-grade-check" for t in threading.enumerate())


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

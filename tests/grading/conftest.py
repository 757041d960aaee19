"""Fixtures shared by the harness tests (test_grade_harness.py, test_grade_survives_learner_code.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from efftrain_lib.grade import grade
from efftrain_lib.grading import CHAPTERS, Chapter

GOOD_DEMO = "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n"


@pytest.fixture
def demo(monkeypatch, tmp_path) -> Path:
    """Register chapter "demo" (grader tests/grading/demo_grader.py, graded file demo.py); a scratch dir."""
    monkeypatch.setitem(CHAPTERS, "demo", Chapter("demo", None, "Demo", grader="demo_grader", filename="demo.py"))
    return tmp_path


def write_demo(directory: Path, text: str) -> Path:
    """directory/demo.py holding `text`; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "demo.py").write_text(text)
    return directory


def assert_solutions_still_pass(chapter: str = "lora") -> None:
    """The reference solutions grade as passing in this same process: nothing a learner's code did
    before is still running, starving them or holding the grader up."""
    report = grade(chapter, "solutions")
    assert report.all_passed, report.to_text()

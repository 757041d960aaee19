"""Whiteboard cards: the learner writes the code, the chapter's grader checks it.

A whiteboard card names one exercise of its chapter (`exercise = "4.1"` in questions.toml). The learner's
answer is a whole module (imports and the exercise's names, as in exercises/<chapter>.py); it is written to a
temporary folder under the chapter's file name and graded by `efftrain_lib.grade`, only that exercise's
checks. The code runs in the grader's child process, which a timeout kills, never in the drill's process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from efftrain_lib.chapters import resolve as resolve_chapter
from efftrain_lib.drill.bank import Card
from efftrain_lib.grade import Report, grade

__all__ = ["grade_whiteboard"]


def grade_whiteboard(card: Card, code: str, *, timeout: float | None = None) -> Report:
    """The chapter grader's report on `code` for the card's exercise (report.all_passed: the card is right)."""
    if not card.is_whiteboard:
        raise ValueError(f"card {card.id!r} is not a whiteboard card (it names no exercise)")
    if not isinstance(code, str) or not code.strip():
        raise ValueError("no code to grade: write the whole module (imports and the exercise's names)")
    with tempfile.TemporaryDirectory(prefix="efftrain-whiteboard-") as folder:
        path = Path(folder) / resolve_chapter(card.chapter).filename
        path.write_text(code, encoding="utf-8")
        return grade(card.chapter, path, exercise=card.exercise, timeout=timeout)

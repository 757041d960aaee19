"""Shared scaffolding for proving a chapter's graders (tests/grading/test_graders_proven.py runs the proof).

Each tests/grading/test_<chapter>_graders.py declares `PROOF = ChapterProof(...)`: what the common proof
must know about that chapter (its exercise ids, its stub notebook, its minimum catalog size, its classic
mistakes, how strict its catalog is), and holds the tests only that chapter needs. This module holds no
assertions (pytest rewrites asserts in test modules only): just the chapter description and the helpers.
"""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from efftrain_lib.grade import Report, Result, grade, load_module

ROOT = Path(__file__).resolve().parents[2]
MISTAKES_ROOT = ROOT / "tests" / "grading" / "mistakes"


@dataclass(frozen=True)
class ChapterProof:
    """What the common proof checks for one chapter (efftrain_lib/grading/<name>.py)."""

    name: str  # the chapter, as `python -m efftrain_lib.grade <name>` spells it
    exercises: frozenset[str]  # the exercise ids its checks cover, e.g. {"1.1", "1.2"}
    notebook: str  # the notebook a stub's message points the learner to
    min_mistakes: int  # the catalog tests/grading/mistakes/<name>/ holds at least this many mistakes
    classics: frozenset[str] = frozenset()  # mistakes (file stems) the catalog must hold by name
    library: str | None = None  # the library's hardened version (relative to the repo root): passes too
    min_checks: int = 1  # the grader has at least this many checks
    # every mistake fails exactly the checks its CAUGHT_BY declares (no undeclared failure)
    exact_failures: bool = False
    # every check a mistake fails reports a plain "fail" (never an error, a timeout or a stub)
    failures_are_fails: bool = False
    cli_timeout: float = 120  # seconds for one `python -m efftrain_lib.grade` run
    cli_shows: tuple[str, ...] = ()  # more text the CLI must print for the solutions

    def __str__(self) -> str:
        return self.name

    @property
    def graders(self) -> ModuleType:
        return importlib.import_module(f"efftrain_lib.grading.{self.name}")

    @property
    def check_ids(self) -> list[str]:
        return [f"{c.exercise} {c.name}" for c in self.graders.CHECKS]

    @property
    def number(self) -> str:
        """The chapter's number, as its exercise ids start: "1" for 1.1, 1.2, ..."""
        return min(self.exercises).split(".")[0]

    @property
    def mistakes_dir(self) -> Path:
        return MISTAKES_ROOT / self.name

    @property
    def mistakes(self) -> list[Path]:
        return sorted(self.mistakes_dir.glob("*.py"))


def by_id(report: Report, check_id: str) -> Result:
    (result,) = [r for r in report.results if f"{r.exercise} {r.check}" == check_id]
    return result


def grade_mistake(chapter: ChapterProof, path: Path) -> tuple[ModuleType, Report]:
    """Grade one mistake of the catalog: its module (for CAUGHT_BY) and its report. A mistake may ask for
    its own per-check timeout (GRADE_TIMEOUT, e.g. one that hangs)."""
    module = load_module(path)
    return module, grade(chapter.name, path, timeout=getattr(module, "GRADE_TIMEOUT", None))


def cli(chapter: str, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m efftrain_lib.grade <chapter> ARGS` from the repo root: the process and its wall time."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "efftrain_lib.grade", chapter, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return proc, time.perf_counter() - start


def uncovered_pairs(cases: list[dict], levels: dict[str, list], allowed: Callable[[dict], bool] = lambda case: True):
    """The pairs of option values ((a, value), (b, value)) that some allowed combination of `levels` holds
    but none of `cases` does: what a pairwise combination check misses (empty when it covers every pair)."""
    names = list(levels)
    combinations = [dict(zip(names, values)) for values in itertools.product(*levels.values())]

    def pairs(case: dict) -> set:
        return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(names, 2)}

    wanted = set().union(*(pairs(c) for c in combinations if allowed(c)))
    return sorted(wanted - set().union(*(pairs(c) for c in cases)), key=str)

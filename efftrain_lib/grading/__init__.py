"""Graders for the course's exercises, one module per chapter.

A grader module (e.g. efftrain_lib/grading/lora.py) defines

    CHECKS = Checks()                      # the ordered list of checks
    EXERCISES = {"1.1": "LoRALinear: ...", ...}   # titles, for the report (optional)

    @CHECKS.add("1.1", "output equals base at init", hint="lora_B must start at zero ...")
    def output_equals_base_at_init(impl):  # impl: the learner's module, loaded from <DIR>/<file>
        ...
        return passed("max |diff| 0 vs base(x)")  # or failed(detail, hint)

and optionally `def prepare(): ...` (heavy imports such as PEFT, run once before the timed checks).
Each check function is named for what it checks (unique in its module, never `_`): a failure's
traceback names it, and `pytest tests/grading -k output_equals_base_at_init` selects its proofs.
Checks call the learner's code only through the exercise API, so any correct implementation passes;
each failure should carry a hint that names the likely mistake, and each check should be proven by a
mistake in tests/grading/mistakes/<chapter>/ (see tests/grading/test_graders_proven.py and
tests/grading/grader_proofs.py; each chapter declares its proof in tests/grading/test_<chapter>_graders.py).

A check that raises NotImplementedError is reported as a stub, another exception as an error (type
and message, plus the check's default hint), a check that runs too long as timed out, one whose process
dies (os._exit, a segfault) as an error naming the exit status: the harness (efftrain_lib/grade.py, which
runs the checks in a child process, efftrain_lib/grade_runner.py) does that, so checks are plain
straight-line code. A grader module must be importable by name: the child process imports it.

Which chapters exist, and which grader module and exercise file each has, is read from the course's
one chapter registry, efftrain_lib/chapters.py (re-exported here as CHAPTERS, Chapter and register).
To add a chapter: add its entry there and write its grader module here (efftrain_lib/grading/<key>.py);
the harness reports "no graders yet" for a registered chapter whose module is missing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

from efftrain_lib.chapters import CHAPTERS, Chapter, register  # noqa: F401 - the registry, re-exported


@dataclass(frozen=True)
class Outcome:
    """What a check function returns: passed or not, the measured discrepancy, and a hint."""

    passed: bool
    detail: str = ""
    hint: str = ""


def passed(detail: str = "") -> Outcome:
    return Outcome(True, detail, "")


def failed(detail: str, hint: str = "") -> Outcome:
    return Outcome(False, detail, hint)


@dataclass(frozen=True)
class Check:
    exercise: str  # "1.1"
    name: str  # "output equals base at init"
    func: Callable[..., Outcome]
    hint: str = ""  # shown when the check errors out rather than returning a failure

    @property
    def function(self) -> str:
        """The check function's own name (under any decorator): what a traceback and `pytest -k` show."""
        return inspect.unwrap(self.func).__code__.co_name


class Checks:
    """An ordered collection of checks, filled with the @CHECKS.add(exercise, name) decorator."""

    def __init__(self) -> None:
        self._checks: list[Check] = []

    def add(self, exercise: str, name: str, hint: str = "") -> Callable:
        def decorator(func: Callable[..., Outcome]) -> Callable[..., Outcome]:
            if any(c.exercise == exercise and c.name == name for c in self._checks):
                raise ValueError(f"duplicate check {exercise} {name!r}")
            self._checks.append(Check(exercise, name, func, hint))
            return func

        return decorator

    def __iter__(self) -> Iterator[Check]:
        return iter(self._checks)

    def __len__(self) -> int:
        return len(self._checks)

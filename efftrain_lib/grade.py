"""The exercise grader: one harness for every chapter.

    python -m efftrain_lib.grade lora                      # grades exercises/lora.py
    python -m efftrain_lib.grade lora --impl solutions     # any directory holding lora.py
    python -m efftrain_lib.grade lora --impl my/lora.py    # or one file
    python -m efftrain_lib.grade lora --exercise 1.2 --json --timeout 5

From a notebook cell (renders a table; never raises because a check failed):

    from efftrain_lib.grade import check
    check("lora")                  # or check("lora", exercise="1.1")

The learner's file is loaded by path under a fresh module name, so the same graders grade the
exercises, the solutions, the library, the mistake catalog (tests/grading/mistakes/) or any directory,
and a re-run after an edit always sees the new code (no import cache, no kernel restart).

The learner's code never runs in this process. It runs in a child process that the grader can kill
(efftrain_lib/grade_runner.py, efftrain_lib/grade_child.py): a check that runs past `timeout` seconds is
killed and reported as timed out, whatever it does (a loop that swallows every exception, a C call that
holds the GIL); a crash, os._exit or sys.exit in the learner's code is reported for the check it happened
in, and the remaining checks still run. What the learner's code prints is captured per check (the
report's `output`), so `--json` stays parseable; a check passes only when its own "pass" came back.
The graders live in efftrain_lib/grading/<chapter>.py; see efftrain_lib/grading/__init__.py.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from efftrain_lib import grade_runner
from efftrain_lib.chapters import UnknownChapter
from efftrain_lib.chapters import resolve as resolve_chapter
from efftrain_lib.grade_child import ERROR, FAIL, PASS, STUB, TIMEOUT, load_module, short
from efftrain_lib.grading import CHAPTERS, Chapter

__all__ = ["DEFAULT_TIMEOUT_S", "ERROR", "FAIL", "PASS", "STUB", "TIMEOUT", "GraderNotFound", "Report",
           "Result", "check", "find_repo_root", "grade", "load_module", "main", "resolve_impl"]

DEFAULT_TIMEOUT_S = 10.0  # per check; every LoRA check takes well under a second on 2 CPU cores
# (a chapter may ask for more: its Chapter.check_timeout_s, used when the caller names no timeout)


# --------------------------------------------------------------------------- locating the code --
def find_repo_root(start: Path | None = None) -> Path:
    """The course's root: the first directory holding exercises/, looking upward from the current
    directory (a notebook runs in notebooks/), then from this package (an editable install)."""
    here = Path.cwd() if start is None else Path(start)
    for candidate in itertools.chain([here], here.parents, Path(__file__).resolve().parents):
        if (candidate / "exercises").is_dir():
            return candidate
    return here


def resolve_impl(chapter: str, impl: str | Path = "exercises") -> Path:
    """The file to grade: `impl` is a directory holding the chapter's file, or a .py file.
    A relative path is taken from the repository root (so "exercises" works from notebooks/ too),
    then from the current directory."""
    spec = _chapter(chapter)
    impl = Path(impl).expanduser()
    if impl.is_absolute():
        candidates = [impl]
    else:
        candidates = [find_repo_root() / impl, Path.cwd() / impl]
    for base in candidates:
        path = base if base.suffix == ".py" else base / spec.filename
        if path.is_file():
            return path.resolve()
    first = candidates[0]
    return first if first.suffix == ".py" else first / spec.filename  # reported as "not found"


# ------------------------------------------------------------------------------------ results --
@dataclass
class Result:
    exercise: str
    check: str
    status: str  # pass | fail | stub | error | timeout
    detail: str = ""  # the measured discrepancy, or what went wrong
    hint: str = ""  # the likely mistake
    seconds: float = 0.0
    output: str = ""  # what the learner's code printed during this check (stdout and stderr)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "seconds": round(self.seconds, 3)}


# ------------------------------------------------------------------------------------ grading --
class GraderNotFound(LookupError):
    pass


def _chapter(chapter: str) -> Chapter:
    """The registry's entry for a key or any alias ("memory", "00", "00_memory_anatomy")."""
    try:
        return resolve_chapter(chapter)
    except UnknownChapter as exc:
        raise GraderNotFound(str(exc)) from None


def grader_module(chapter: str) -> str:
    """The chapter's grader module (its import name), checked to exist without importing it here."""
    spec = _chapter(chapter)
    try:
        found = importlib.util.find_spec(spec.grader)
    except ModuleNotFoundError:
        found = None
    except ValueError:  # a module object put in sys.modules by hand: the child process cannot import it
        raise GraderNotFound(f"chapter {chapter!r}: the grader {spec.grader} has no file; the checks run in "
                             "a child process, which imports the grader by name from sys.path") from None
    if found is None:
        raise GraderNotFound(f"chapter {chapter!r} has no graders yet ({spec.grader} is missing)")
    return spec.grader


def default_timeout(chapter: str) -> float:
    """Seconds per check when none is given: the chapter's own (if it names one), else DEFAULT_TIMEOUT_S."""
    return _chapter(chapter).check_timeout_s or DEFAULT_TIMEOUT_S


def valid_timeout(timeout: object) -> float:
    """The per-check timeout in seconds: a finite number > 0 (a check past it is killed)."""
    try:
        seconds = float(timeout)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(timeout, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return seconds


def grade(chapter: str, impl: str | Path = "exercises", *, exercise: str | list[str] | None = None,
          timeout: float | None = None) -> "Report":
    """Grade the chapter's file in `impl` (a directory or a .py file). Never raises for learner
    errors: every problem becomes a row of the report. timeout: seconds per check (None: the chapter's
    own, else DEFAULT_TIMEOUT_S)."""
    spec = _chapter(chapter)
    timeout = valid_timeout(default_timeout(spec.key) if timeout is None else timeout)
    chapter = spec.key  # reports and messages use the canonical name, whichever alias was given
    grader = grader_module(chapter)
    checks, exercises = grade_runner.describe(grader)
    selected = list(range(len(checks)))
    if exercise is not None:
        wanted = {exercise} if isinstance(exercise, str) else set(exercise)
        selected = [i for i in selected if checks[i].exercise in wanted]
        if not selected:
            raise ValueError(f"no checks for exercise(s) {sorted(wanted)} in chapter {chapter!r}")

    path = resolve_impl(chapter, impl)
    shown = _display_path(path)
    if not path.is_file():
        results = [Result(checks[i].exercise, checks[i].name, ERROR, f"no such file: {shown}",
                          f"pass a directory holding {_chapter(chapter).filename}, or the file itself")
                   for i in selected]
        return Report(chapter, shown, results, exercises)
    ran, printed = grade_runner.run(grader, path, shown, checks, selected, timeout)
    results = [Result(checks[i].exercise, checks[i].name, ran[i].status, ran[i].detail, ran[i].hint,
                      ran[i].seconds, ran[i].output) for i in selected]
    return Report(chapter, shown, results, exercises, printed)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(find_repo_root().resolve()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------- report --
_LABEL = {PASS: "PASS", FAIL: "FAIL", STUB: "FAIL", ERROR: "FAIL", TIMEOUT: "FAIL"}


@dataclass
class Report:
    chapter: str
    impl: str
    results: list[Result]
    exercises: dict
    output: str = ""  # what the learner's file printed while loading (each check's own is in its Result)

    @property
    def n_passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def all_passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def first_failure(self) -> Result | None:
        return next((r for r in self.results if not r.passed), None)

    def summary(self) -> str:
        n, total = self.n_passed, len(self.results)
        if self.all_passed:
            return f"All {total} checks passed for {self.chapter} ({self.impl}). Well done!"
        stubs = sum(r.status == STUB for r in self.results)
        line = f"{n}/{total} checks passed for {self.chapter} ({self.impl})"
        if stubs:
            line += f"; {stubs} not implemented yet"
        f = self.first_failure
        line += f". First failing check: {f.exercise} {f.check}: {f.detail.rstrip('.')}."
        if f.hint:
            line += f" Hint: {f.hint}"
        return line

    def to_dict(self) -> dict:
        return {
            "chapter": self.chapter,
            "impl": self.impl,
            "passed": self.n_passed,
            "total": len(self.results),
            "all_passed": self.all_passed,
            "output": self.output,
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        rows = [("Exercise", "Check", "Result", "Discrepancy")]
        rows += [(r.exercise, r.check, _LABEL[r.status], r.detail) for r in self.results]
        w = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"Grading {self.chapter}: {self.impl}", ""]
        if self.output:
            lines[1:1] = [f"printed while loading: {short(self.output)}"]
        previous = None
        for i, row in enumerate(rows):
            if i > 0 and row[0] != previous:
                title = self.exercises.get(row[0], "")
                lines.append(f"-- Exercise {row[0]}" + (f": {title}" if title else ""))
                previous = row[0]
            lines.append(f"{row[0]:<{w[0]}}  {row[1]:<{w[1]}}  {row[2]:<{w[2]}}  {row[3]}".rstrip())
            if i > 0 and self.results[i - 1].hint:
                lines.append(" " * (w[0] + 2) + "hint: " + self.results[i - 1].hint)
            if i > 0 and self.results[i - 1].output:
                lines.append(" " * (w[0] + 2) + "printed: " + short(self.results[i - 1].output))
        lines += ["", self.summary()]
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        e = html.escape
        ok, bad = "#1a7f37", "#cf222e"
        cells = "padding:2px 8px;text-align:left;vertical-align:top"
        body = []
        printed = "<br><small>printed: {}</small>"
        for r in self.results:
            colour = ok if r.passed else bad
            body.append(
                f"<tr><td style='{cells}'>{e(r.exercise)}</td><td style='{cells}'>{e(r.check)}</td>"
                f"<td style='{cells};color:{colour};font-weight:bold'>{_LABEL[r.status]}</td>"
                f"<td style='{cells}'>{e(r.detail)}{printed.format(e(short(r.output))) if r.output else ''}</td>"
                f"<td style='{cells}'>{e(r.hint)}</td></tr>"
            )
        head = "".join(f"<th style='{cells}'>{h}</th>" for h in ("Exercise", "Check", "Result", "Discrepancy", "Hint"))
        colour = ok if self.all_passed else bad
        loading = f"<p><small>printed while loading: {e(short(self.output))}</small></p>" if self.output else ""
        return (
            f"<div><p><b>Grading {e(self.chapter)}</b>: <code>{e(self.impl)}</code></p>{loading}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p style='color:{colour};font-weight:bold'>{e(self.summary())}</p></div>"
        )


def check(chapter: str, impl: str | Path = "exercises", *, exercise: str | list[str] | None = None,
          timeout: float | None = None) -> Report:
    """Grade from a notebook: returns a Report, shown as a table (HTML in Jupyter, text otherwise).
    Failing checks never raise, so a notebook executed in CI with the stubs runs through."""
    return grade(chapter, impl, exercise=exercise, timeout=timeout)


# ---------------------------------------------------------------------------------------- CLI --
def _timeout_argument(text: str) -> float:
    try:
        return valid_timeout(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m efftrain_lib.grade",
        description="Grade a chapter's exercises. Exit status 0 only if every check passes.",
    )
    parser.add_argument("chapter", help=f"the chapter to grade: {', '.join(CHAPTERS)}, or an alias "
                        "(its number, its notebook's name, e.g. memory, 00, 00_memory_anatomy)")
    parser.add_argument("--impl", default="exercises",
                        help="directory holding the chapter's file, or the .py file (default: exercises)")
    parser.add_argument("--exercise", action="append", help="only this exercise, e.g. 1.2 (repeatable)")
    parser.add_argument("--timeout", type=_timeout_argument, default=None,
                        help=f"seconds per check (a finite number > 0; a check past it is killed; default "
                        f"{DEFAULT_TIMEOUT_S:g}, or the chapter's own: distributed "
                        f"{default_timeout('distributed'):g})")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args(argv)
    try:
        report = grade(args.chapter, args.impl, exercise=args.exercise, timeout=args.timeout)
    except (GraderNotFound, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())

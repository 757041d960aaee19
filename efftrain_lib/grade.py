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
The graders live in efftrain_lib/grading/<chapter>.py; see efftrain_lib/grading/__init__.py.
"""

from __future__ import annotations

import argparse
import ctypes
import html
import importlib
import importlib.util
import itertools
import json
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from efftrain_lib.chapters import UnknownChapter
from efftrain_lib.chapters import resolve as resolve_chapter
from efftrain_lib.grading import CHAPTERS, Chapter, Check, Outcome

DEFAULT_TIMEOUT_S = 10.0  # per check; every LoRA check takes well under a second on 2 CPU cores
_MAX_TEXT = 300  # longest detail/hint kept (an exception message can be a whole tensor)

PASS, FAIL, STUB, ERROR, TIMEOUT = "pass", "fail", "stub", "error", "timeout"


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


_counter = itertools.count()


def load_module(path: str | Path, name: str | None = None) -> ModuleType:
    """Execute a Python file as a new module (a fresh name every call: no stale import cache).
    Mistake files use it to start from the solution and override one piece."""
    path = Path(path).resolve()
    if name is None:
        name = f"_efftrain_graded_{path.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


# ------------------------------------------------------------------------------------ results --
@dataclass
class Result:
    exercise: str
    check: str
    status: str  # pass | fail | stub | error | timeout
    detail: str = ""  # the measured discrepancy, or what went wrong
    hint: str = ""  # the likely mistake
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "seconds": round(self.seconds, 3)}


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


# ---------------------------------------------------------------------------- running checks --
class CheckTimeout(BaseException):
    """Raised inside a check thread that ran past its time. A BaseException, so that learner code
    with a bare `except Exception:` cannot swallow it."""


# Why a daemon thread per check (and not a subprocess): the harness must grade inside a running
# notebook kernel, where a subprocess would re-import torch and PEFT (~4 s on 2 cores) per grade
# and could not see the kernel's environment; the test suite grades ~30 implementations and must
# stay fast. The thread is joined with a timeout, so the caller always gets a report after N s.
# A thread cannot be killed, so on timeout we also raise CheckTimeout inside it
# (PyThreadState_SetAsyncExc): that stops pure-Python loops and sleeps between bytecodes; a single
# long C call (one huge matmul) finishes first. The thread is a daemon, so it never blocks exit.
def _run_in_thread(fn, timeout: float):
    """Run fn() in a daemon thread. Returns ("ok", value), ("raised", (exc, tb)) or ("timeout", None)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except CheckTimeout:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported, never re-raised
            box["error"] = (exc, exc.__traceback__)

    thread = threading.Thread(target=target, name="efftrain-grade-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        _interrupt(thread)
        thread.join(0.5)  # give it a moment to die, so it does not compete with the next check
        return "timeout", None
    if "error" in box:
        return "raised", box["error"]
    return "ok", box.get("value")


def _interrupt(thread: threading.Thread) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(CheckTimeout))


def _where(tb, path: Path | None) -> str:
    """' (lora.py line 42, in forward)' for the deepest frame in the graded file, if any."""
    if tb is None or path is None:
        return ""
    frames = [f for f in traceback.extract_tb(tb) if Path(f.filename).resolve() == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" ({path.name} line {f.lineno}, in {f.name})"


def _describe_exception(exc: BaseException, tb, path: Path | None) -> tuple[str, str]:
    """(status, detail) for an exception raised by learner code."""
    if isinstance(exc, NotImplementedError):
        return STUB, _short(f"not implemented yet (stub): {exc}".rstrip(": "))
    message = str(exc).strip() or "(no message)"
    return ERROR, _short(f"{type(exc).__name__}: {message}{_where(tb, path)}")


def _seeded(func, module):
    """Run a check with a fixed seed, without disturbing the caller's RNG (a notebook's)."""
    import torch

    def run():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            return func(module)

    return run


def run_check(check: Check, module: ModuleType, timeout: float = DEFAULT_TIMEOUT_S,
              path: Path | None = None) -> Result:
    start = time.perf_counter()
    kind, value = _run_in_thread(_seeded(check.func, module), timeout)
    seconds = time.perf_counter() - start
    if kind == "timeout":
        return Result(check.exercise, check.name, TIMEOUT,
                      f"timed out after {timeout:g} s (an infinite loop, or far too much work?)",
                      _short(check.hint), seconds)
    if kind == "raised":
        exc, tb = value
        status, detail = _describe_exception(exc, tb, path)
        return Result(check.exercise, check.name, status, detail,
                      "" if status == STUB else _short(check.hint), seconds)
    if not isinstance(value, Outcome):
        return Result(check.exercise, check.name, ERROR,
                      f"grader bug: check returned {type(value).__name__}, not an Outcome", "", seconds)
    return Result(check.exercise, check.name, PASS if value.passed else FAIL, _short(value.detail),
                  "" if value.passed else _short(value.hint or check.hint), seconds)


# ------------------------------------------------------------------------------------ grading --
class GraderNotFound(LookupError):
    pass


def _chapter(chapter: str) -> Chapter:
    """The registry's entry for a key or any alias ("memory", "00", "00_memory_anatomy")."""
    try:
        return resolve_chapter(chapter)
    except UnknownChapter as exc:
        raise GraderNotFound(str(exc)) from None


def load_grader(chapter: str) -> ModuleType:
    spec = _chapter(chapter)
    try:
        return importlib.import_module(spec.grader)
    except ModuleNotFoundError as exc:
        if exc.name == spec.grader:
            raise GraderNotFound(f"chapter {chapter!r} has no graders yet ({spec.grader} is missing)") from None
        raise


def grade(chapter: str, impl: str | Path = "exercises", *, exercise: str | list[str] | None = None,
          timeout: float = DEFAULT_TIMEOUT_S) -> "Report":
    """Grade the chapter's file in `impl` (a directory or a .py file). Never raises for learner
    errors: every problem becomes a row of the report."""
    spec = _chapter(chapter)
    chapter = spec.key  # reports and messages use the canonical name, whichever alias was given
    grader = load_grader(chapter)
    checks = list(grader.CHECKS)
    if exercise is not None:
        wanted = {exercise} if isinstance(exercise, str) else set(exercise)
        checks = [c for c in checks if c.exercise in wanted]
        if not checks:
            raise ValueError(f"no checks for exercise(s) {sorted(wanted)} in chapter {chapter!r}")
    prepare = getattr(grader, "prepare", None)
    if prepare is not None:  # heavy imports (PEFT) once, outside the per-check timer
        try:
            prepare()
        except Exception:  # noqa: BLE001 - the checks that need it report the problem
            pass

    path = resolve_impl(chapter, impl)
    shown = _display_path(path)
    results: list[Result] = []
    if not path.is_file():
        problem = f"no such file: {shown}"
        results = [Result(c.exercise, c.name, ERROR, problem, "pass a directory holding "
                          f"{spec.filename}, or the file itself") for c in checks]
        return Report(chapter, shown, results, getattr(grader, "EXERCISES", {}))

    kind, value = _run_in_thread(lambda: load_module(path), timeout)
    if kind != "ok":
        if kind == "timeout":
            detail = f"could not load {shown}: timed out after {timeout:g} s (work at import time?)"
        else:
            exc, tb = value
            detail = f"could not load {shown}: {_describe_exception(exc, tb, path)[1]}"
            if isinstance(exc, SyntaxError) and exc.lineno:
                detail = f"could not load {shown}: SyntaxError: {exc.msg} (line {exc.lineno})"
        results = [Result(c.exercise, c.name, ERROR, _short(detail), "fix the file so that it imports")
                   for c in checks]
        return Report(chapter, shown, results, getattr(grader, "EXERCISES", {}))

    module = value
    # The checks use tiny tensors: one intra-op thread is faster than waking a thread pool for every
    # op, and far less noisy on a busy 2-core machine (measured: 0.1 s vs 0.2-1 s per LoRA grade).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for c in checks:
            results.append(run_check(c, module, timeout, path))
    finally:
        torch.set_num_threads(threads)  # a notebook's setting is left as it was
    return Report(chapter, shown, results, getattr(grader, "EXERCISES", {}))


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
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        rows = [("Exercise", "Check", "Result", "Discrepancy")]
        rows += [(r.exercise, r.check, _LABEL[r.status], r.detail) for r in self.results]
        w = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"Grading {self.chapter}: {self.impl}", ""]
        previous = None
        for i, row in enumerate(rows):
            if i > 0 and row[0] != previous:
                title = self.exercises.get(row[0], "")
                lines.append(f"-- Exercise {row[0]}" + (f": {title}" if title else ""))
                previous = row[0]
            lines.append(f"{row[0]:<{w[0]}}  {row[1]:<{w[1]}}  {row[2]:<{w[2]}}  {row[3]}".rstrip())
            if i > 0 and self.results[i - 1].hint:
                lines.append(" " * (w[0] + 2) + "hint: " + self.results[i - 1].hint)
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
        for r in self.results:
            colour = ok if r.passed else bad
            body.append(
                f"<tr><td style='{cells}'>{e(r.exercise)}</td><td style='{cells}'>{e(r.check)}</td>"
                f"<td style='{cells};color:{colour};font-weight:bold'>{_LABEL[r.status]}</td>"
                f"<td style='{cells}'>{e(r.detail)}</td><td style='{cells}'>{e(r.hint)}</td></tr>"
            )
        head = "".join(f"<th style='{cells}'>{h}</th>" for h in ("Exercise", "Check", "Result", "Discrepancy", "Hint"))
        colour = ok if self.all_passed else bad
        return (
            f"<div><p><b>Grading {e(self.chapter)}</b>: <code>{e(self.impl)}</code></p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p style='color:{colour};font-weight:bold'>{e(self.summary())}</p></div>"
        )


def check(chapter: str, impl: str | Path = "exercises", *, exercise: str | list[str] | None = None,
          timeout: float = DEFAULT_TIMEOUT_S) -> Report:
    """Grade from a notebook: returns a Report, shown as a table (HTML in Jupyter, text otherwise).
    Failing checks never raise, so a notebook executed in CI with the stubs runs through."""
    return grade(chapter, impl, exercise=exercise, timeout=timeout)


# ---------------------------------------------------------------------------------------- CLI --
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
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per check")
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

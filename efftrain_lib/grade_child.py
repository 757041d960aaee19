"""The grading child process: where the learner's code runs, so that the grader can kill it.

efftrain_lib/grade_runner.py starts `serve()` below as a long-lived *server* process and talks to it over
its stdin and stdout, one JSON message per line. The server imports a chapter's grader and runs its
prepare() once (torch and PEFT: seconds), then, for every grade, forks a *worker* from that warm state
(tens of milliseconds). The worker loads the learner's file, runs the requested checks in order in its
main thread, and reports each result the moment it has it; the server waits for the worker to end and
reports how it ended (its exit status). The server never runs learner code, so it outlives whatever that
code does: an infinite loop that swallows every exception, a C call that holds the GIL, os._exit, a
segfault. The parent kills a worker that runs past the per-check timeout (its whole process group, so
whatever the learner's code started goes too).

The worker's stdout and stderr (file descriptors 1 and 2, so output from C and warnings too) go to a file
the parent reads after each message: what the learner's code printed is reported with the check that
printed it, and never mixed into the parent's own output (the CLI's --json).

Where fork is missing or unsafe (Windows, macOS) the server runs each grade itself, and the parent replaces
it after a death or a kill (slower: a fresh server imports torch again).

This module is also imported by the parent (load_module, the statuses), so it imports nothing heavy at
the top: torch is imported by the server, before its first fork.
"""

from __future__ import annotations

import faulthandler
import importlib
import importlib.util
import io
import itertools
import json
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from efftrain_lib.grading import Check, Outcome

PASS, FAIL, STUB, ERROR, TIMEOUT = "pass", "fail", "stub", "error", "timeout"
MAX_TEXT = 300  # longest detail/hint kept (an exception message can be a whole tensor)
SEED = 1234  # every check starts from this torch seed


# --------------------------------------------------------------------------- the learner's file --
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


# ------------------------------------------------------------------ describing what went wrong --
def safe_str(obj: object) -> str:
    """str(obj), or a note saying that failed: a learner's exception can define a __str__ that raises."""
    try:
        return str(obj)
    except BaseException as exc:  # noqa: BLE001 - the learner's code, reported, never re-raised
        return f"<str() of this {type(obj).__name__} raised {type(exc).__name__}>"


def short(text: object) -> str:
    text = " ".join(safe_str(text).split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _where(tb, path: Path | None) -> str:
    """' (lora.py line 42, in forward)' for the deepest frame in the graded file, if any."""
    if tb is None or path is None:
        return ""
    frames = [f for f in traceback.extract_tb(tb) if Path(f.filename).resolve() == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" ({path.name} line {f.lineno}, in {f.name})"


def describe_exception(exc: BaseException, tb, path: Path | None) -> tuple[str, str]:
    """(status, detail) for an exception raised by learner code."""
    if isinstance(exc, NotImplementedError):
        return STUB, short(f"not implemented yet (stub): {safe_str(exc)}".rstrip(": "))
    message = safe_str(exc).strip() or "(no message)"
    return ERROR, short(f"{type(exc).__name__}: {message}{_where(tb, path)}")


def _load_problem(exc: BaseException, path: Path) -> str:
    """What stopped the learner's file from loading (the parent prefixes "could not load FILE: ")."""
    if isinstance(exc, SyntaxError) and isinstance(exc.lineno, int):
        return short(f"SyntaxError: {safe_str(exc.msg)} (line {exc.lineno})")
    return describe_exception(exc, exc.__traceback__, path)[1]


# ---------------------------------------------------------------------------- running a check --
def run_check(check: Check, module: ModuleType, path: Path | None = None) -> tuple[str, str, str]:
    """(status, detail, hint) of one check, run from a fixed seed."""
    import torch  # imported by the server before any fork: free here

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            outcome = check.func(module)
    except BaseException as exc:  # noqa: BLE001 - the learner's code: reported, never re-raised
        status, detail = describe_exception(exc, exc.__traceback__, path)
        return status, detail, "" if status == STUB else short(check.hint)
    if not isinstance(outcome, Outcome):
        return ERROR, f"grader bug: check returned {type(outcome).__name__}, not an Outcome", ""
    if outcome.passed:
        return PASS, short(outcome.detail), ""
    return FAIL, short(outcome.detail), short(outcome.hint or check.hint)


# ---------------------------------------------------------------------------------- messages --
def write_message(fd: int, message: dict) -> None:
    """One JSON line, in one os.write where it fits: a pipe delivers a write of up to PIPE_BUF (4 KiB)
    whole, so a worker killed right after a result cannot leave half a message behind."""
    data = memoryview((json.dumps(message) + "\n").encode())
    while data:
        data = data[os.write(fd, data):]


# ------------------------------------------------------------------------------------ server --
def serve() -> None:
    """The server's loop: one request per line on stdin, replies on stdout (see grade_runner)."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # nothing printed here or in a worker can reach the replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a notebook's interrupt is for the parent to handle
    _die_with_parent()
    import torch  # noqa: F401 - every check runs seeded through torch: imported once, before any fork

    for line in requests:
        request = json.loads(line)
        sys.path[:] = request["sys_path"]  # the parent's, as it is now (a test or notebook may add to it)
        importlib.invalidate_caches()
        if request["op"] == "describe":
            write_message(replies, _describe(request["grader"]))
        elif request["op"] == "grade":
            write_message(replies, {"op": "finished", "code": _grade(request, replies, requests.fileno())})


def _describe(grader_name: str) -> dict:
    """Import and prepare the grader (cached for every later fork), list its checks."""
    try:
        grader = _prepared(grader_name)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        return {"op": "grader_error", "detail": traceback.format_exc()}
    return {"op": "checks", "checks": [[c.exercise, c.name, c.hint] for c in grader.CHECKS],
            "exercises": dict(getattr(grader, "EXERCISES", {}))}


def _prepared(grader_name: str) -> ModuleType:
    """The grader module, imported, with its prepare() run: heavy imports (PEFT) happen here, outside
    any check's timer (and only once per server: later forks inherit them)."""
    grader = importlib.import_module(grader_name)
    prepare = getattr(grader, "prepare", None)
    if prepare is not None:
        try:
            prepare()
        except Exception:  # noqa: BLE001 - the checks that need it report the problem
            pass
    return grader


def _grade(job: dict, replies: int, requests: int) -> int | None:
    """Run one grade in a forked worker; its exit code (negative: killed by that signal).
    Without fork, run it here (None: the server lives on)."""
    if not job["fork"]:
        _work(job, replies)
        return None
    pid = os.fork()
    if pid == 0:  # the worker
        code = 0
        try:
            os.close(requests)
            os.setpgid(0, 0)  # its own process group: a kill on timeout takes what it started too
            _die_with_parent()
            _no_core_file()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _work(job, replies)
        except BaseException:  # noqa: BLE001 - a bug of ours, not the learner's: shown in the output
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)  # no atexit handlers, no waiting for threads the learner's code started
    try:
        os.setpgid(pid, pid)  # from both sides, so the group exists before the parent may kill it
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _work(job: dict, replies: int) -> None:
    """Load the learner's file and run the checks job["indices"], reporting as it goes."""
    pid = os.getpid()

    def send(**message) -> None:
        if os.getpid() != pid:  # a process the learner's code forked came back into the grader: stop it
            os._exit(0)
        # Where the output file ends now (prints are unbuffered, so all of them are in it): the parent
        # reads up to here, so output printed after this message (the next check's, even a crash dump
        # written while the parent is still reading) is not taken for this one's.
        try:
            message["output_end"] = os.path.getsize(job["output"])
        except OSError:  # the learner's code removed the file: the parent reads to the end
            pass
        write_message(replies, message)

    import torch

    checks = list(_prepared(job["grader"]).CHECKS)  # cached, unless this server was started after a death
    with _output_to(job["output"]), _working_directory(job["cwd"]), _threads(torch, 1):
        send(op="started", pid=pid)
        path = Path(job["path"])
        try:
            module = load_module(path)
        except BaseException as exc:  # noqa: BLE001 - the learner's code: reported
            send(op="load_failed", detail=_load_problem(exc, path))
            return
        send(op="loaded")
        for index in job["indices"]:
            start = time.perf_counter()
            status, detail, hint = run_check(checks[index], module, path)
            send(op="result", index=index, status=status, detail=detail, hint=hint,
                 seconds=time.perf_counter() - start)
        send(op="done")


@contextmanager
def _output_to(path: str):
    """Send fds 1 and 2 (and sys.stdout, sys.stderr, unbuffered: nothing is lost to os._exit) to the
    parent's output file; put them back after (which matters only when the server grades in-process)."""
    saved = [os.dup(1), os.dup(2)]
    streams = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = sys.__stdout__ = _unbuffered(1)
    sys.stderr = sys.__stderr__ = _unbuffered(2)
    faulthandler.enable(sys.stderr)  # a segfault leaves its Python traceback in the check's output
    try:
        yield
    finally:
        faulthandler.disable()
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = streams
        for target, fd in zip((1, 2), saved):
            os.dup2(fd, target)
            os.close(fd)


def _unbuffered(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                            line_buffering=True, write_through=True)


@contextmanager
def _working_directory(cwd: str | None):
    """The parent's working directory (a learner's relative paths mean what they mean in the notebook)."""
    before = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
    except OSError:
        pass
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def _threads(torch, n: int):
    # The checks use tiny tensors: one intra-op thread is faster than waking a thread pool for every
    # op, and far less noisy on a busy 2-core machine (measured: 0.1 s vs 0.2-1 s per LoRA grade).
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _no_core_file() -> None:
    """A learner's segfault must not leave a core file of the whole grader (hundreds of MB) behind."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process when its parent dies: a notebook kernel killed
    mid-grade leaves no server or worker behind (elsewhere the server ends when its stdin closes)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

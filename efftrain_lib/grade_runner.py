"""Runs a chapter's checks on the learner's code in a child process that the grader can kill.

Why a child process: a check that hangs must be stopped, and a thread cannot be stopped. A loop with
`except BaseException:` swallows any exception injected into it and spins for the rest of the kernel's
life (starving later grades), a C call that holds the GIL ignores a timeout entirely, and os._exit or a
segfault in the learner's code would end the kernel or the CLI (which then printed nothing and exited 0).
A process can be killed, and its death can be seen.

Why this shape: importing torch and PEFT takes seconds, and the test suite grades ~40 implementations.
One server process per grading process (a notebook kernel, the CLI, pytest) imports them once; each
grade runs in a worker forked from it (see efftrain_lib/grade_child.py), which streams back one result
per check. The parent waits for each result at most `timeout` seconds: a worker that runs past it is
killed (its whole process group), and one that dies is reported with its exit status; either way the
remaining checks run in a fresh worker. A dead or silent worker is a failure: a check passes only when
its own "pass" came back.

Why not multiprocessing's forkserver: its preloaded modules are fixed, process-wide, when it starts, so
either every grade of any chapter pays for PEFT (seconds per CLI run) or every LoRA grade imports it
again; the server here prepares a chapter's grader the first time it is asked and every later fork
inherits it. And it starts with `python -c`, not spawn, which re-runs the parent's __main__ (a learner's
script that calls check() without a main guard would start itself again).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from efftrain_lib.grade_child import ERROR, TIMEOUT, short

# Without a safe fork the server grades in-process, and is replaced after a kill or a death (see
# grade_child): Windows has no fork, and on macOS a fork after system frameworks are loaded can crash
# (why multiprocessing defaults to spawn there).
FORK_WORKERS = hasattr(os, "fork") and sys.platform != "darwin"
START_LIMIT_S = 600.0  # our own code's work (starting Python, importing torch and PEFT on a busy machine)
EXIT_LIMIT_S = 10.0  # for a killed worker's exit to be reported
MAX_OUTPUT = 2000  # characters of a check's printed output kept (the last ones)
_BOOT = "import sys; sys.path[:0] = sys.argv[1:]; from efftrain_lib.grade_child import serve; serve()"


@dataclass(frozen=True)
class CheckInfo:
    exercise: str
    name: str
    hint: str


@dataclass(frozen=True)
class Ran:
    """How one check ended, as efftrain_lib.grade.Result holds it."""

    status: str
    detail: str
    hint: str = ""
    seconds: float = 0.0
    output: str = ""  # what the learner's code printed during the check


class GradingProcessError(RuntimeError):
    """The grader itself (not the learner's code) could not run: its module failed to import, or the
    server process could not start."""


# -------------------------------------------------------------------------------- the server --
class _Server:
    """The long-lived child process (grade_child.serve) and a thread that queues its replies."""

    def __init__(self) -> None:
        self._log = tempfile.TemporaryFile()  # its stderr: shown if it fails to start
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, *map(str, sys.path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log)
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name="efftrain-grade-replies", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self._replies.put(json.loads(line))
            except ValueError:
                self._replies.put({"op": "unreadable"})
        self.proc.stdout.close()
        self._replies.put({"op": "gone"})  # end of file: the server has exited

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, **request) -> None:
        request["sys_path"] = [str(p) for p in sys.path]
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:  # it died since the last request
            pass  # reply() then returns "gone"

    def reply(self, limit: float) -> dict:
        """The next message, {"op": "timeout"} after `limit` seconds, or {"op": "gone"} if it exited.
        Waits in short slices: a notebook's interrupt (SIGINT, which may land on another thread) is
        raised here within a quarter of a second, not after the whole timeout."""
        deadline = time.monotonic() + limit
        while True:
            try:
                return self._replies.get(timeout=min(0.25, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return {"op": "timeout"}

    def exit_code(self) -> int | None:
        try:
            return self.proc.wait(EXIT_LIMIT_S)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-MAX_OUTPUT:]

    def stop(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        try:
            self.proc.stdin.close()  # stdout is closed by the reader at its end; the log stays readable
        except OSError:
            pass


_server: _Server | None = None
_lock = threading.RLock()  # one grade at a time per process: a job's messages must not interleave


def _current() -> _Server:
    global _server
    if _server is None or not _server.alive:
        _discard()
        _server = _Server()
    return _server


def _discard() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


atexit.register(_discard)


def _ask(**request) -> tuple[_Server, dict]:
    """Send a request and wait for the first reply. A server found dead (it may have been killed since
    the last grade) is replaced once: nothing of the learner's ran before a first reply."""
    try:
        for _ in range(2):
            server = _current()
            server.send(**request)
            message = server.reply(START_LIMIT_S)
            if message["op"] != "gone":
                break
            _discard()
    except BaseException:
        _discard()  # an interrupt between a request and its reply: start clean next time
        raise
    return server, message


# ------------------------------------------------------------------------------------ grading --
def describe(grader: str) -> tuple[list[CheckInfo], dict]:
    """The grader module's checks (in order) and exercise titles, as the server imported them."""
    with _lock:
        server, message = _ask(op="describe", grader=grader)
        if message["op"] == "checks":
            return [CheckInfo(*c) for c in message["checks"]], message["exercises"]
        if message["op"] == "grader_error":
            raise GradingProcessError(f"the grader {grader} failed to import:\n{message['detail']}")
        log = server.log_tail()
        _discard()
        raise GradingProcessError(f"the grading process could not start ({message['op']}):\n{log}")


def _without_module_list(text: str) -> str:
    """A crash dump without faulthandler's closing "Extension modules: ..." line: it lists every C
    extension the process imported (a long line in a warm grading process) and would push the learner's
    own frame out of the MAX_OUTPUT characters kept."""
    return re.sub(r"\nExtension modules: [^\n]*(\n|$)", "\n", text)


def run(grader: str, path: Path, shown: str, checks: list[CheckInfo], indices: list[int],
        timeout: float) -> tuple[dict[int, Ran], str]:
    """Run the checks `indices` of the grader on the file `path` (shown to the learner as `shown`):
    {index: how it ended} for every index, and what the file printed while loading."""
    with _lock, _Output() as output:
        grading = _Grading(grader, path, shown, checks, output, timeout)
        try:
            while pending := [i for i in indices if i not in grading.results]:
                grading.job(pending)
        except BaseException:
            grading.stop()  # an interrupt (a notebook's stop button): no worker may outlive it
            raise
        return grading.results, grading.load_output


class _Output:
    """The file the workers' stdout and stderr go to; each read returns what was printed since the last."""

    def __enter__(self) -> _Output:
        fd, self.path = tempfile.mkstemp(prefix="efftrain-grade-", suffix=".out")
        self._file = os.fdopen(fd, "rb")
        self._offset = 0
        return self

    def take(self, end: int | None = None) -> str:
        """What was printed since the last take, up to byte `end` (where the worker said its output
        stood when it sent the message being handled) or to the end of the file."""
        size = os.fstat(self._file.fileno()).st_size
        if isinstance(end, int) and self._offset <= end < size:
            size = end
        start = max(self._offset, size - 4 * MAX_OUTPUT)  # a learner printing in a loop: keep the end
        self._file.seek(start)
        text = _without_module_list(self._file.read(size - start).decode("utf-8", errors="replace"))
        cut = start > self._offset or len(text) > MAX_OUTPUT
        self._offset = size
        return "..." + text[-MAX_OUTPUT:] if cut else text

    def __exit__(self, *exc) -> None:
        self._file.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class _Grading:
    """One grade: the jobs it takes (a first worker, and a fresh one after each kill or death)."""

    def __init__(self, grader, path, shown, checks, output, timeout) -> None:
        self.grader, self.path, self.shown, self.checks = grader, path, shown, checks
        self.output, self.timeout = output, timeout
        self.results: dict[int, Ran] = {}
        self.load_output = ""
        self.worker: _Worker | None = None  # the one running now
        self._loaded_once = False

    def job(self, pending: list[int]) -> None:
        """Run the pending checks in one worker until they are done or it is killed or dies: every check
        it finished, and the one it was killed in or died in, gets a result."""
        server, message = _ask(op="grade", grader=self.grader, path=str(self.path), indices=pending,
                               output=self.output.path, cwd=_cwd(), fork=FORK_WORKERS)
        if message["op"] != "started":
            return self._fail_all(pending, f"the grading process failed to start a check ({message['op']})",
                                  server)
        self.worker = _Worker(server, message["pid"], FORK_WORKERS)
        if self._load(pending):
            self._check(pending)
        self.worker = None
        return None

    def _load(self, pending: list[int]) -> bool:
        message = self.worker.server.reply(self.timeout)
        printed = self.output.take(message.get("output_end"))
        if not self._loaded_once:  # a fresh worker loads the file again: its prints are not news
            self.load_output = printed
        if message["op"] == "loaded":
            self._loaded_once = True
            return True
        if message["op"] == "load_failed":
            self.worker.finish()
            self._fail_load(pending, message["detail"])
        elif message["op"] == "timeout":
            self.worker.kill()
            self._fail_load(pending, f"timed out after {self.timeout:g} s (work at import time?)")
        else:
            code = self.worker.ended(message)
            self._fail_load(pending, f"{_died(code)} while loading it ({_why(code, 'at import time')})")
        return False

    def _check(self, pending: list[int]) -> None:
        start = time.perf_counter()
        for index in pending:
            message = self.worker.server.reply(self.timeout)
            seconds, start = time.perf_counter() - start, time.perf_counter()
            if message["op"] == "result" and message["index"] == index:
                self.results[index] = Ran(message["status"], message["detail"], message["hint"],
                                          message["seconds"], self.output.take(message.get("output_end")))
                continue
            if message["op"] == "timeout":
                self.worker.kill()
                self._record(index, TIMEOUT, f"timed out after {self.timeout:g} s (an infinite loop, or far "
                             "too much work?)", seconds)
            elif message["op"] in ("finished", "gone"):
                code = self.worker.ended(message)
                self._record(index, ERROR, f"{_died(code)} during this check: {_why(code, 'in your code')}",
                             seconds)
            else:  # "done" too early, a result out of turn, a garbled line: never taken for a pass
                self.worker.kill()
                self._record(index, ERROR, f"no result came back for this check (got {message['op']!r})", seconds)
            return
        self.worker.finish()

    def stop(self) -> None:
        """After an interrupt: kill the running worker (the server stays, warm for the next grade); when
        it is unclear where the server stands, kill the server too."""
        worker, self.worker = self.worker, None
        if worker is None or not worker.forked:
            _discard()
            return
        try:
            worker.kill()
        except BaseException:
            _discard()
            raise

    def _record(self, index: int, status: str, detail: str, seconds: float) -> None:
        self.results[index] = Ran(status, short(detail), short(self.checks[index].hint), seconds,
                                  self.output.take())

    def _fail_load(self, pending: list[int], problem: str) -> None:
        detail = short(f"could not load {self.shown}: {problem}")
        for index in pending:
            self.results[index] = Ran(ERROR, detail, "fix the file so that it imports")

    def _fail_all(self, pending: list[int], problem: str, server: _Server) -> None:
        problem = f"{problem}: {server.log_tail()}" if not server.alive else problem
        _discard()
        for index in pending:
            self.results[index] = Ran(ERROR, short(problem), "this is a problem of the grader, not of your code")


class _Worker:
    """The process running one job: a fork of the server, or (without fork) the server itself."""

    def __init__(self, server: _Server, pid: int, forked: bool) -> None:
        self.server, self.pid, self.forked = server, pid, forked

    def kill(self) -> None:
        """Kill it and everything it started, and wait until it is gone."""
        if not self.forked:
            _discard()
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass  # it ended on its own meanwhile
        self.ended(self.server.reply(EXIT_LIMIT_S))

    def ended(self, message: dict) -> int | None:
        """Its exit code, from the message that said it ended (or from waiting for that message); then
        whatever it started that still runs is killed too."""
        while message["op"] not in ("finished", "gone", "timeout", "unreadable"):
            message = self.server.reply(EXIT_LIMIT_S)  # a late result of a killed check: dropped
        if self.forked:
            try:  # its process group: a group id is not reused while any member lives
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass  # nothing left
        if message["op"] == "finished" and message["code"] is not None:
            return message["code"]
        code = self.server.exit_code() if message["op"] == "gone" else None
        _discard()  # the server died, or lost track of its worker: start a fresh one
        return code

    def finish(self) -> None:
        """After "done": wait for its exit to be reported, so the next job starts on a clean line."""
        message = self.server.reply(EXIT_LIMIT_S)
        while message["op"] == "done":
            message = self.server.reply(EXIT_LIMIT_S)
        self.ended(message)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _died(code: int | None) -> str:
    if code is None:
        return "the grading process stopped answering"
    if code >= 0:
        return f"the process exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"the process was killed by {name}"


_CRASHES = {getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")
            if hasattr(signal, name)}


def _why(code: int | None, where: str) -> str:
    """The likely cause of a death, from its exit code."""
    if code is None:
        return "a problem of the grader, not of your code: try again"
    if code >= 0:
        return f"os._exit or sys.exit {where}?"
    if -code in _CRASHES:
        return "a crash in C code (ctypes, or a native extension)? See the traceback it printed"
    if -code == getattr(signal, "SIGKILL", None):
        return "killed from outside (out of memory?)"
    return "a signal sent by your code, or from outside?"

"""The grader survives whatever the learner's code does (efftrain_lib/grade_runner.py, grade_child.py).

The learner's code runs in a child process that the grader kills on timeout: a loop that swallows every
exception, a C call that holds the GIL, os._exit or a segfault in a check or at import, prints to stdout
and stderr, an exception whose __str__ raises. Each is reported for the check it happened in, the
remaining checks still run, nothing is left running, and afterwards the reference solutions still grade
as passing in the same process. The same from a Jupyter kernel, and where fork is not available.
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import GOOD_DEMO, assert_solutions_still_pass, write_demo

from efftrain_lib import grade_runner
from efftrain_lib.grade import grade, grader_module, main

ROOT = Path(__file__).resolve().parents[2]
HANG = ROOT / "tests" / "grading" / "mistakes" / "lora" / "hangs_in_merge.py"
MUL = "\n\ndef mul(a, b):\n    return a * b\n"  # the second check passes: proves the remaining checks ran
EXITED = "the process exited with status 0 during this check: os._exit or sys.exit in your code?"
linux_only = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")


def _n_checks(chapter: str, exercise: str | None = None) -> int:
    """How many checks the chapter's grader has (for one exercise, or all): a report must hold one row
    for each, whatever happened to the learner's code."""
    checks, _ = grade_runner.describe(grader_module(chapter))
    n = sum(1 for c in checks if exercise is None or c.exercise == exercise)
    assert n > 0, (chapter, exercise)
    return n


def _worker_processes() -> list[str]:
    """The processes the grading server has running now (its forked workers)."""
    server = grade_runner._server
    assert server is not None and server.alive, "the grading server itself must survive the learner's code"
    pid = server.proc.pid
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def _starts_a_sleeper() -> tuple[str, str]:
    """(marker, the start of a demo.py whose add() first starts a 10-minute subprocess tagged marker)."""
    marker = f"efftrain-test-{uuid.uuid4().hex}"
    return marker, ("import subprocess, sys, time\n"
                    "def add(a, b):\n"
                    f"    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{marker}'])\n")


def _running_with(marker: str) -> list[str]:
    """Processes whose command line holds `marker`, once the kill sent to them has had time to land
    (SIGKILL is delivered asynchronously; waits up to 10 s for them to go)."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(entry.name)
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ---------------------------------------------------------------------------------- timeouts --
@linux_only
def test_a_hanging_check_times_out_and_leaves_nothing_running():
    report = grade("lora", HANG, exercise="1.2", timeout=0.5)
    assert [r.status for r in report.results] == ["timeout"] * _n_checks("lora", "1.2")
    assert all(r.detail.startswith("timed out after 0.5 s") for r in report.results)
    assert _worker_processes() == []  # each busy loop was killed, not left spinning
    assert_solutions_still_pass()


@linux_only
def test_a_loop_that_swallows_every_exception_is_killed_with_what_it_started(demo):
    # An exception injected into a thread (the old harness's way to stop a check) is swallowed here.
    marker, starts = _starts_a_sleeper()
    impl = write_demo(demo, starts + "    while True:\n"
                                     "        try:\n"
                                     "            time.sleep(0.01)\n"
                                     "        except BaseException:\n"
                                     "            pass\n" + MUL)
    report = grade("demo", impl, timeout=0.5)
    add, mul = report.results
    assert add.status == "timeout" and add.detail.startswith("timed out after 0.5 s")
    assert add.hint == "add(a, b) returns a + b"
    assert mul.passed  # in a fresh worker
    assert _worker_processes() == []
    assert _running_with(marker) == []  # the kill took the process group: the subprocess it started too
    assert_solutions_still_pass()


def test_a_c_call_holding_the_gil_is_killed(demo):
    # ctypes.PyDLL keeps the GIL during the call: no Python-level timeout could interrupt it.
    impl = write_demo(demo, "import ctypes\ndef add(a, b):\n    ctypes.PyDLL(None).sleep(600)\n" + MUL)
    report = grade("demo", impl, timeout=0.5)
    add, mul = report.results
    assert add.status == "timeout" and mul.passed
    assert_solutions_still_pass()


@linux_only
def test_an_interrupt_stops_the_check_and_the_grader_stays_warm(demo):
    # A notebook's stop button raises KeyboardInterrupt in the kernel while it waits for a check: the
    # worker is killed, and the server (torch, PEFT imported) stays for the next grade.
    impl = write_demo(demo, "def add(a, b):\n    while True:\n        pass\n" + MUL)
    assert grade("demo", write_demo(demo / "good", GOOD_DEMO)).all_passed
    server = grade_runner._server
    # A kernel handles SIGINT; a test run started in the background may have it ignored, and then
    # interrupt_main does nothing (the grade would wait out its 300 s timeout).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            grade("demo", impl, timeout=300)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert grade_runner._server is server and _worker_processes() == []
    assert grade("demo", demo / "good").all_passed


@linux_only
def test_a_passing_check_leaves_nothing_running_either(demo):
    marker, starts = _starts_a_sleeper()
    assert grade("demo", write_demo(demo, starts + "    return a + b\n" + MUL)).all_passed
    assert _worker_processes() == [] and _running_with(marker) == []


# ------------------------------------------------------------------------------------ deaths --
def test_os_exit_in_a_check_fails_that_check_and_the_rest_still_run(demo):
    impl = write_demo(demo, "import os\ndef add(a, b):\n    os._exit(0)\n" + MUL)
    report = grade("demo", impl)
    add, mul = report.results
    assert (add.status, add.detail) == ("error", EXITED)
    assert add.hint == "add(a, b) returns a + b"
    assert mul.passed and not report.all_passed
    assert_solutions_still_pass()


def test_sys_exit_in_a_check_is_an_error_not_an_exit(demo):
    impl = write_demo(demo, "import sys\ndef add(a, b):\n    sys.exit(3)\n" + MUL)
    add, mul = grade("demo", impl).results
    assert (add.status, add.detail) == ("error", "SystemExit: 3 (demo.py line 3, in add)")
    assert mul.passed
    assert_solutions_still_pass()


def test_a_segfault_is_reported_with_its_traceback(demo):
    impl = write_demo(demo, "import ctypes\ndef add(a, b):\n    return ctypes.string_at(0)\n" + MUL)
    add, mul = grade("demo", impl).results
    assert add.status == "error"
    assert add.detail.startswith("the process was killed by SIGSEGV during this check: a crash in C code")
    assert "Segmentation fault" in add.output and 'demo.py", line 3 in add' in add.output  # faulthandler's
    assert mul.passed
    assert_solutions_still_pass()


def test_os_exit_at_import_fails_every_check(demo):
    impl = write_demo(demo, "import os\nos._exit(0)\n" + GOOD_DEMO)
    report = grade("demo", impl)
    assert [r.status for r in report.results] == ["error", "error"]
    assert all(r.detail == f"could not load {impl / 'demo.py'}: the process exited with status 0 while loading "
               "it (os._exit or sys.exit at import time?)" for r in report.results)
    assert all(r.hint == "fix the file so that it imports" for r in report.results)
    assert_solutions_still_pass()


def test_an_exception_whose_str_raises_is_reported(demo):
    raising = ("class Weird(Exception):\n"
               "    def __str__(self):\n"
               "        raise RuntimeError('no str for you')\n")
    impl = write_demo(demo / "in_check", raising + "def add(a, b):\n    raise Weird()\n" + MUL)
    add, mul = grade("demo", impl).results
    assert add.status == "error"
    assert add.detail == "Weird: <str() of this Weird raised RuntimeError> (demo.py line 5, in add)"
    assert mul.passed
    at_import = write_demo(demo / "at_import", raising + "raise Weird()\n" + GOOD_DEMO)
    assert all(r.detail == f"could not load {at_import / 'demo.py'}: Weird: <str() of this Weird raised "
               "RuntimeError> (demo.py line 4, in <module>)" for r in grade("demo", at_import).results)
    assert_solutions_still_pass()


# ------------------------------------------------------------------------------------ output --
PRINTS = ("import os, sys\n"
          "print('stdout at import')\n"
          "print('stderr at import', file=sys.stderr)\n"
          "def add(a, b):\n"
          "    print('stdout in add')\n"
          "    print('stderr in add', file=sys.stderr)\n"
          "    os.write(1, b'fd 1 in add')\n"  # as C code writes
          "    return a + b\n" + MUL)


def test_prints_are_reported_with_the_check_that_printed_them(demo, capfd):
    report = grade("demo", write_demo(demo, PRINTS))
    assert report.all_passed
    assert report.output == "stdout at import\nstderr at import\n"
    add, mul = report.results
    assert add.output == "stdout in add\nstderr in add\nfd 1 in add"
    assert mul.output == ""
    assert capfd.readouterr() == ("", "")  # nothing reached this process's stdout or stderr
    assert "printed while loading: stdout at import stderr at import" in report.to_text()
    assert "printed: stdout in add stderr in add fd 1 in add" in report.to_text()
    assert "printed: stdout in add" in report._repr_html_()
    assert_solutions_still_pass()


def test_a_slow_reader_still_gives_each_check_its_own_output(demo, monkeypatch):
    # The worker runs on while the grader handles a message: a grader busy elsewhere (a loaded machine)
    # used to read the next check's prints, or the first lines of a crash dump, as this one's.
    slow_take = grade_runner._Output.take

    def late(self, *end):
        time.sleep(0.5)  # by now the worker has loaded the file, run add and printed in mul
        return slow_take(self, *end)

    monkeypatch.setattr(grade_runner._Output, "take", late)
    text = "print('at import')\ndef add(a, b):\n    print('in add')\n    return a + b\n\ndef mul(a, b):\n" \
           "    print('in mul')\n    return a * b\n"
    report = grade("demo", write_demo(demo, text))
    assert report.all_passed and report.output == "at import\n"
    assert [r.output for r in report.results] == ["in add\n", "in mul\n"]


def test_json_stays_parseable_when_the_learner_prints(demo, capfd):
    assert main(["demo", "--impl", str(write_demo(demo, PRINTS)), "--json"]) == 0
    out, err = capfd.readouterr()
    data = json.loads(out)  # the whole of stdout is the report
    assert err == ""
    assert data["all_passed"] and data["output"] == "stdout at import\nstderr at import\n"
    assert data["results"][0]["output"] == "stdout in add\nstderr in add\nfd 1 in add"
    assert_solutions_still_pass()


def test_cli_reports_os_exit_at_import_as_a_failure(tmp_path):
    # It used to print nothing and exit 0, which means "every check passed".
    impl = tmp_path / "memory_math.py"
    impl.write_text("import os\nprint('about to leave')\nos._exit(0)\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "efftrain_lib.grade", "memory_math", "--impl", str(impl), "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["passed"] == 0 and data["total"] == _n_checks("memory_math") and data["output"] == "about to leave\n"
    assert {r["status"] for r in data["results"]} == {"error"}
    assert all("exited with status 0 while loading it" in r["detail"] for r in data["results"])


# --------------------------------------------------------------------------- seeds, no fork --
def test_every_check_starts_from_the_same_seed(demo):
    torch.manual_seed(1234)
    first = torch.rand(1).item()
    # Both checks pass only if each starts from the seed (a draw at import or in the check before does
    # not shift the next check's draws).
    impl = write_demo(demo, f"import torch\ntorch.rand(5)\n"
                            f"def add(a, b):\n    return a + b if torch.rand(1).item() == {first!r} else -1\n"
                            f"def mul(a, b):\n    return a * b if torch.rand(1).item() == {first!r} else -1\n")
    assert grade("demo", impl).all_passed


def test_without_fork_the_server_grades_itself_and_is_replaced_after_a_death_or_a_kill(demo, monkeypatch):
    # Where fork is missing or unsafe (Windows, macOS), the server runs the checks itself: a death or a
    # kill ends it, and a fresh one runs the remaining checks.
    monkeypatch.setattr(grade_runner, "FORK_WORKERS", False)
    monkeypatch.setattr(grade_runner, "_server", None)  # servers of its own: the warm one is kept for later
    try:
        exits = grade("demo", write_demo(demo / "exits", "import os\ndef add(a, b):\n    os._exit(0)\n" + MUL))
        assert [(r.status, r.detail) for r in exits.results] == [("error", EXITED), ("pass", "mul(2, 3) == 6")]
        spins = grade("demo", write_demo(demo / "spins", "def add(a, b):\n    while True:\n        pass\n" + MUL),
                      timeout=0.5)
        assert [r.status for r in spins.results] == ["timeout", "pass"]
    finally:
        grade_runner._discard()


# ---------------------------------------------------------------------------- from a notebook --
@linux_only
def test_a_jupyter_kernel_survives_the_learners_code(tmp_path):
    """check() in a real kernel: a hang and an os._exit are reported, the kernel lives on, nothing of the
    learner's is left running, and the solutions still pass there."""
    jupyter_client = pytest.importorskip("jupyter_client.manager")
    impl = tmp_path / "memory_math.py"
    impl.write_text("import os\n"
                    "def training_memory_bytes(*args, **kwargs):\n"
                    "    while True:\n"
                    "        try:\n"
                    "            pass\n"
                    "        except BaseException:\n"
                    "            pass\n"
                    "def lora_trainable_params(*args, **kwargs):\n"
                    "    os._exit(0)\n")
    code = (f"from efftrain_lib.grade import check\n"
            f"from efftrain_lib import grade_runner\n"
            f"hang = check('memory_math', {str(impl)!r}, exercise='0.1', timeout=0.5)\n"
            f"died = check('memory_math', {str(impl)!r}, exercise='0.2')\n"
            f"ok = check('memory_math', 'solutions')\n"
            f"pid = grade_runner._server.proc.pid\n"
            f"left = open(f'/proc/{{pid}}/task/{{pid}}/children').read().split()\n"
            f"print(sorted({{r.status for r in hang.results}}), sorted({{r.status for r in died.results}}),"
            f" ok.all_passed, left)\n")
    manager, client = jupyter_client.start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    try:
        outputs = []
        reply = client.execute_interactive(code, timeout=240, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok", reply["content"]
        text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        assert text.strip() == "['timeout'] ['error'] True []"
        assert manager.is_alive()
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)

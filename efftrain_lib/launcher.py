"""Several processes from a notebook: start N ranks, run a library function in every one, bring back
what each returned, and never leave a process (or a notebook) hanging.

    from efftrain_lib.launcher import WorkerGroup, launch
    results = launch(my_module.rank_fn, world_size=2, steps=3)      # one run: start, run, stop
    with WorkerGroup(world_size=2) as group:                         # or keep the ranks for many runs
        first = group.run(my_module.rank_fn, steps=3)                # [rank 0's result, rank 1's result]
        second = group.run(my_module.other_fn)

How, and why this way:

* The ranks are started with torch.multiprocessing's "spawn": a fresh interpreter per rank, safe from
  a process that already runs threads (a notebook kernel, a grader). Spawn pickles the function *by
  reference*, so it must live in an importable module (the library), never in the notebook's __main__
  (which the ranks do not even import: a script needs no `if __name__ == "__main__":` guard for them).
* Ports are never guessed: the parent hosts the rendezvous (a torch.distributed.TCPStore on
  127.0.0.1, port 0: the OS picks a free one) and every rank connects to it.
* Every `run` gets a fresh default process group (torch.distributed.init_process_group over a
  PrefixStore of that store, ~30 ms), torn down when the function returns: what one run leaves behind
  (an un-awaited collective, a half-finished bucket) cannot pair with the next run's collectives.
* Nothing waits forever. The group's collectives time out after the run's limit; the parent waits for
  every rank's answer at most that long, then stops every rank. A rank that raises sends its
  traceback; its exception is re-raised in the caller, with the rank's traceback as its cause (as
  concurrent.futures does), so a notebook shows where the worker failed. If the other ranks do not
  finish shortly after (they wait in a collective the failed rank never joined), they are stopped too.
* On Ctrl-C (KeyboardInterrupt) or any error in the parent while it waits, every rank is stopped. A
  rank also exits by itself when its parent process is gone.
* A group belongs to the process that started it: a process forked from that one (a grading child)
  must start its own (`run` says so instead of mixing its messages with the owner's).

The same rank functions run under torchrun from a terminal: `init_from_environment()` joins the group
torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). The backend is gloo on CPU; nccl is
chosen when the ranks have GPUs (`device_for_backend`).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import itertools
import os
import pickle
import signal
import socket
import sys
import time
import traceback
import types
import weakref
from multiprocessing.connection import wait as wait_for_connections
from typing import Any, Callable, Iterator

import torch
# Before any process group exists, on purpose: torch._dynamo (which the first optimizer imports anyway)
# keeps a reference to the default group when it is imported while one exists, so destroy_process_group
# leaves the group's gloo threads running until the interpreter exits, where tearing them down now and
# then aborts a finished rank ("terminate called without an active exception"). Checked on torch 2.13.
import torch._dynamo  # noqa: F401
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["BACKENDS", "RemoteTraceback", "WorkerError", "WorkerGroup", "WorkerTimeout", "default_backend",
           "device_for_backend", "free_port", "init_from_environment", "launch", "lost_peer", "shared_group"]

BACKENDS = ("gloo", "nccl")
HOST = "127.0.0.1"
#: What the ranks import before they say they are ready: the first optimizer a process creates imports
#: torch._dynamo (2-5 s on a busy 2-core machine), better paid while starting than inside the first run.
PRELOAD = ("torch._dynamo",)
START_TIMEOUT_S = 180.0  # starting Python and importing torch in every rank, on a busy 2-core machine
RUN_TIMEOUT_S = 60.0
GRACE_S = 2.0  # after one rank failed: how long the others get to finish before they are stopped
_POLL_S = 0.25  # how often a wait wakes up (an interrupt is seen within this)


class RemoteTraceback(Exception):
    """A rank's traceback, attached as the cause of the exception re-raised in the caller."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + self.text


class WorkerError(RuntimeError):
    """A rank failed in a way its own exception cannot carry (it died, or its exception would not
    pickle); the message says which rank and how, and ends with the rank's traceback when there is one."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


class WorkerTimeout(WorkerError, TimeoutError):
    """Some rank did not answer within the time limit; every rank has been stopped."""


def free_port(host: str = HOST) -> int:
    """A TCP port free on `host` right now (for a launcher that needs one named, e.g. torchrun)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_backend() -> str:
    """nccl when this machine has GPUs, else gloo (the course's CPU runs)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_for_backend(backend: str | None = None, rank: int | None = None) -> torch.device:
    """The device a rank computes on: its own GPU under nccl (rank modulo the GPUs here), else the CPU."""
    backend = backend or (dist.get_backend() if dist.is_initialized() else default_backend())
    if backend == "nccl":
        rank = dist.get_rank() if rank is None else rank
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (gloo on CPU, nccl on GPUs), got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs GPUs, and torch.cuda.is_available() is False here; use 'gloo'")
    return backend


def _check_seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def init_from_environment(backend: str | None = None, timeout_s: float = RUN_TIMEOUT_S) -> tuple[int, int]:
    """Join the process group a launcher describes in the environment (torchrun sets RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT); returns (rank, world_size). Under nccl, selects this rank's GPU."""
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(f"not started by a launcher: {', '.join(missing)} not set. Run it as "
                           "`torchrun --nproc-per-node 2 -m <module> ...`")
    backend = _check_backend(backend or default_backend())
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])) % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


# ------------------------------------------------------------------------------------------ rank --
def _serve(rank: int, world_size: int, port: int, backend: str, conn, threads: int | None, parent: int,
           preload: tuple[str, ...]) -> None:
    """A rank's life: connect to the parent's store, then run one task after another until told to stop
    or until the parent is gone. Runs in the spawned process."""
    # Ctrl-C reaches the whole process group (a terminal, a kernel shut down): the parent decides, and
    # stops the ranks itself; a rank interrupted on its own would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in preload:
        importlib.import_module(name)
    if threads is not None:
        torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    store = dist.TCPStore(HOST, port, is_master=False, timeout=datetime.timedelta(seconds=START_TIMEOUT_S))
    conn.send(("ready", None, rank, os.getpid()))
    while True:
        try:
            if not conn.poll(1.0):
                if os.getppid() != parent:  # the parent died without a word: nobody will ask again
                    return
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _, task, fn, args, kwargs, timeout_s = message
        conn.send(_run_task(rank, world_size, backend, store, task, fn, args, kwargs, timeout_s))


def _run_task(rank, world_size, backend, store, task, fn, args, kwargs, timeout_s) -> tuple:
    try:
        dist.init_process_group(backend, store=dist.PrefixStore(f"run{task}/", store), rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
        try:
            value = fn(*args, **kwargs)
        finally:
            dist.destroy_process_group()
        pickle.dumps(value)  # an unpicklable result is this rank's error, reported as such
        return ("ok", task, rank, value)
    except BaseException as exc:  # noqa: BLE001 - sent to the caller, who re-raises it
        text = traceback.format_exc()
        try:
            payload = pickle.dumps(exc)
            pickle.loads(payload)
        except BaseException:  # noqa: BLE001 - an exception that does not survive pickling
            payload = None
        return ("raised", task, rank, (payload, f"{type(exc).__name__}: {exc}", text))


# ---------------------------------------------------------------------------------------- parent --
@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Keep spawn from re-running the parent's __main__ in each rank. The ranks run library functions
    only (run() refuses __main__'s), so they never need it; and re-running it would start ranks from the
    ranks of a script without an `if __name__ == "__main__":` guard, or re-import ipykernel in each rank
    of a notebook. Spawn reads sys.modules["__main__"] while start() prepares the child, so a bare
    stand-in for that moment is enough."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main



_task_ids = itertools.count(1)


def _stop(pids: list[int], owner: int) -> None:
    """Kill the ranks (only from the process that started them; a forked copy leaves them alone)."""
    if os.getpid() != owner:
        return
    for pid in pids:
        try:
            os.kill(pid, 9)
        except (ProcessLookupError, PermissionError):
            pass


class WorkerGroup:
    """N spawned ranks in one process group, kept for many runs (see the module docstring).

    world_size: 1 or more ranks. backend: "gloo" (CPU; the default without GPUs) or "nccl".
    threads: torch threads per rank (1 by default: the ranks share the machine's cores).
    preload: modules each rank imports while starting (default PRELOAD).
    start_timeout_s: the longest wait for the ranks to start; run_timeout_s: each run's default limit.
    The ranks start on the first `run` (or `start()`); `close()` (or leaving a `with` block) stops them.
    """

    def __init__(self, world_size: int = 2, *, backend: str | None = None, threads: int | None = 1,
                 start_timeout_s: float = START_TIMEOUT_S, run_timeout_s: float = RUN_TIMEOUT_S,
                 preload: tuple[str, ...] = PRELOAD):
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
        self.world_size = world_size
        self.backend = _check_backend(backend or default_backend())
        self.threads = threads
        self.preload = tuple(preload)
        self.start_timeout_s = _check_seconds("start_timeout_s", start_timeout_s)
        self.run_timeout_s = _check_seconds("run_timeout_s", run_timeout_s)
        self._owner = os.getpid()
        self._store = None
        self._processes: list = []
        self._conns: list = []
        self._ready = False
        self._finalizer = None
        self.exitcodes: list = []  # the ranks' exit codes after the last close (negative: killed by that signal)
        self.starts = 0  # how many times ranks were started (a failed run makes the next one start anew)

    # -- life cycle ----------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return bool(self._conns) and os.getpid() == self._owner

    def start(self, wait: bool = True) -> "WorkerGroup":
        """Start the ranks (a no-op when they are running); returns the group. wait=False returns as soon
        as they are spawned (they import torch meanwhile); the next `run` waits for them to be ready."""
        self._check_owner()
        if not self._conns:
            self._spawn()
        if wait and not self._ready:
            try:
                self._gather(None, self.start_timeout_s, what="start")
            except BaseException:
                self.close()
                raise
            self._ready = True
        return self

    def _spawn(self) -> None:
        self._store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False,
                                    timeout=datetime.timedelta(seconds=self.start_timeout_s))
        ctx = mp.get_context("spawn")
        try:
            for rank in range(self.world_size):
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(target=_serve, name=f"efftrain-rank-{rank}", daemon=True,
                                      args=(rank, self.world_size, self._store.port, self.backend, child_end,
                                            self.threads, os.getpid(), self.preload))
                with _main_hidden():
                    process.start()
                child_end.close()  # only the rank holds its end: its death reads as end-of-file here
                self._processes.append(process)
                self._conns.append(parent_end)
        except BaseException:
            self.close()
            raise
        self._finalizer = weakref.finalize(self, _stop, [p.pid for p in self._processes], self._owner)
        self._ready = False
        self.starts += 1

    def close(self) -> None:
        """Stop every rank (politely, then by force after a second) and forget them."""
        if os.getpid() != self._owner:
            return
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 1.0
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5.0)
        for conn in self._conns:
            conn.close()
        self.exitcodes = [process.exitcode for process in self._processes] or self.exitcodes
        if self._finalizer is not None:
            self._finalizer.detach()
        self._processes, self._conns, self._store, self._finalizer, self._ready = [], [], None, None, False

    def __enter__(self) -> "WorkerGroup":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"WorkerGroup(world_size={self.world_size}, backend={self.backend!r}, {state})"

    def _check_owner(self) -> None:
        if os.getpid() != self._owner:
            raise RuntimeError(f"this WorkerGroup was started by process {self._owner}; process {os.getpid()} "
                               "(a fork of it) must start its own")

    # -- running -------------------------------------------------------------------------------------
    def run(self, fn: Callable, *args, timeout_s: float | None = None, **kwargs) -> list[Any]:
        """fn(*args, **kwargs) in every rank, inside a fresh default process group; returns the ranks'
        results in rank order. fn must be importable by name (a module-level function of a module).

        A rank's exception is re-raised here (its traceback as the cause); a rank that dies or runs past
        `timeout_s` (default: the group's run_timeout_s) stops the whole group (the next run starts it
        anew) and raises WorkerError / WorkerTimeout.
        """
        timeout_s = self.run_timeout_s if timeout_s is None else _check_seconds("timeout_s", timeout_s)
        if not callable(fn):
            raise ValueError(f"fn must be a callable, got {type(fn).__name__}")
        if getattr(fn, "__module__", None) == "__main__" or "<locals>" in getattr(fn, "__qualname__", ""):
            raise ValueError(f"{getattr(fn, '__qualname__', fn)!r} is defined in __main__ or inside a function: "
                             "the ranks are spawned and find a function by its module and name, so put it in a "
                             "module they can import (the library)")
        self.start()
        task = next(_task_ids)
        message = ("run", task, fn, args, kwargs, timeout_s)
        for rank, conn in enumerate(self._conns):
            try:
                conn.send(message)
            except (OSError, ValueError) as exc:
                self.close()
                raise WorkerError(f"rank {rank} is gone ({exc}); the group was stopped, run again", rank) from None
        return self._gather(task, timeout_s, what=getattr(fn, "__qualname__", "run"))

    def _gather(self, task: int | None, timeout_s: float, what: str) -> list[Any]:
        """Every rank's answer to `task` (None: the ready message), or raise after stopping the group."""
        results: dict[int, Any] = {}
        failures: dict[int, tuple] = {}
        pending = dict(enumerate(self._conns))
        deadline = time.monotonic() + timeout_s
        try:
            while pending:
                now = time.monotonic()
                if now >= deadline:
                    break
                for conn in wait_for_connections(list(pending.values()), timeout=min(_POLL_S, deadline - now)):
                    rank = next(r for r, c in pending.items() if c is conn)
                    try:
                        kind, answered, _, value = conn.recv()
                    except (EOFError, OSError):
                        pending.pop(rank)
                        failures[rank] = ("died", None)
                        continue
                    if answered != task:
                        continue  # an answer to an earlier run that was abandoned
                    pending.pop(rank)
                    if kind in ("ok", "ready"):
                        results[rank] = value
                    else:
                        failures[rank] = ("raised", value)
                if failures and pending:  # the others may wait for the failed rank: a short grace
                    deadline = min(deadline, time.monotonic() + GRACE_S)
        except BaseException:  # Ctrl-C, a grader's timeout: nobody is left running
            self.close()
            raise
        if pending or any(kind == "died" for kind, _ in failures.values()):
            self._raise_stopped(pending, failures, timeout_s, what)
        if failures:
            rank = _first_cause(failures)
            self._raise_failure(rank, failures[rank][1])
        return [results[rank] for rank in range(self.world_size)]

    def _raise_stopped(self, pending: dict, failures: dict, timeout_s: float, what: str):
        """Some rank hung or died: stop them all, then say so (a hang or a death is the news, whatever
        the other ranks raised while waiting for it)."""
        self.close()
        raised = {r: f[1] for r, f in failures.items() if f[0] == "raised"}
        cause = None
        also = ""
        if raised:
            rank = _first_cause({r: ("raised", v) for r, v in raised.items()})
            payload, summary, text = raised[rank]
            cause = RemoteTraceback(f'Traceback of rank {rank}:\n"""\n{text.rstrip()}\n"""')
            also = f"; rank {rank} raised {summary[:200]}"
        dead = sorted(r for r, f in failures.items() if f[0] == "died")
        if dead:
            codes = ", ".join(f"rank {r}: {_describe_exit(self.exitcodes[r] if r < len(self.exitcodes) else None)}"
                              for r in dead)
            raise WorkerError(f"rank(s) {dead} died during {what} without an answer ({codes}){also}; every rank "
                              "has been stopped", dead[0]) from cause
        raise WorkerTimeout(f"rank(s) {sorted(pending)} did not finish {what} within {timeout_s:g} s (a hang: ranks "
                            f"that wait for a collective another rank never calls?){also}; every rank has been "
                            "stopped", min(pending)) from cause

    def _raise_failure(self, rank: int, value: tuple):
        payload, summary, text = value
        remote = RemoteTraceback(f'Traceback of rank {rank}:\n"""\n{text.rstrip()}\n"""')
        if payload is not None:
            exc = pickle.loads(payload)
            raise exc from remote
        raise WorkerError(f"rank {rank} raised {summary}", rank) from remote


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGABRT": " (a C++ abort: e.g. gloo refusing tensors whose sizes differ across ranks)",
               "SIGKILL": " (killed: out of memory?)", "SIGSEGV": " (a crash in native code)"}.get(name, "")
        return f"killed by {name}{why}"
    return f"exit code {code}"


# What a rank sees when *another* rank failed first: its collective lost its peer or timed out.
_CONSEQUENCES = ("Connection closed by peer", "Connection reset by peer", "Read error", "Timed out", "timed out",
                 "Broken pipe")


def lost_peer(error: BaseException) -> bool:
    """Did this exception come from a collective whose partner rank went away or never came (rather than
    from the rank's own code)?"""
    return isinstance(error, RuntimeError) and any(word in str(error) for word in _CONSEQUENCES)


def _first_cause(failures: dict[int, tuple]) -> int:
    """The rank whose exception explains the run: the first to fail (dicts keep arrival order), passing
    over ranks whose collective merely lost a peer that had already failed."""
    causes = [rank for rank, (kind, value) in failures.items()
              if kind == "raised" and not any(word in value[1] for word in _CONSEQUENCES)]
    return (causes or list(failures))[0]


_shared: dict[tuple, WorkerGroup] = {}


def shared_group(world_size: int = 2, backend: str | None = None) -> WorkerGroup:
    """This process's one group of `world_size` ranks, started on first use and kept: the notebook's runs
    and the grader's checks share it (starting ranks costs seconds; using them, milliseconds). A group
    that was stopped (after a hang) is started again; a forked process gets its own."""
    key = (os.getpid(), world_size, backend or default_backend())
    group = _shared.get(key)
    if group is None:
        group = _shared[key] = WorkerGroup(world_size, backend=backend)
    return group.start()


def launch(fn: Callable, world_size: int = 2, *args, backend: str | None = None, timeout_s: float = RUN_TIMEOUT_S,
           threads: int | None = 1, **kwargs) -> list[Any]:
    """Start `world_size` ranks, run fn(*args, **kwargs) in every one, stop them; the ranks' results."""
    with WorkerGroup(world_size, backend=backend, threads=threads) as group:
        return group.run(fn, *args, timeout_s=timeout_s, **kwargs)

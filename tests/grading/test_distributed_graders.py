"""Chapter 5 (data parallelism, ZeRO-1): what the common proof of its graders needs
(tests/grading/test_graders_proven.py runs it: solutions and the library in efftrain_lib/distributed.py pass,
stubs fail as stubs, every mistake in tests/grading/mistakes/distributed/ fails exactly the checks it declares
with a plain "fail" naming it, the CLI), and the tests only this chapter needs: its checks run in two ranks
started by the grader, so a rank that hangs or dies must be a reported failure (and the next check must
still run), and a grading process forked from one that holds the ranks must start its own.
A grade of the whole chapter takes ~1.5 s once the two ranks are up (~5 s to start them).
"""

from __future__ import annotations

import multiprocessing

from grader_proofs import ROOT, ChapterProof, by_id

from efftrain_lib.grade import grade

PROOF = ChapterProof(
    "distributed", exercises=frozenset({"5.1", "5.2", "5.3", "5.4", "5.5"}),
    notebook="notebooks/05_distributed.ipynb",
    min_mistakes=8,
    # the list
    classics=frozenset({"sum_instead_of_mean", "no_wait_on_handles", "hook_before_accumulation",
                        "no_sync_still_communicates", "per_rank_token_normalisation", "state_on_every_rank",
                        "broadcast_from_wrong_rank", "bucket_blocked_by_unused_parameter"}),
    library="efftrain_lib",  # efftrain_lib/distributed.py (data_parallel.py and sharding.py)
    min_checks=20,
    exact_failures=True, failures_are_fails=True,
    cli_timeout=180,  # the CLI starts Python, torch and two ranks: ~25 s on a busy 2-core machine
    cli_shows=("Exercise 5.3: OverlappedDDP", "Exercise 5.5: ShardedOptimizer"),
)

SOLUTION = ROOT / "solutions" / "distributed.py"


def _write(tmp_path, body: str):
    """The solution with `body` appended; ONCE in body is a file that exists after the first call of a
    misbehaving function that checks `first_time()` (so that one check misbehaves, not all of them)."""
    path = tmp_path / "distributed.py"
    path.write_text(f"from efftrain_lib.grade import load_module\n_solution = load_module({str(SOLUTION)!r})\n"
                    "globals().update({k: v for k, v in vars(_solution).items() if not k.startswith('__')})\n"
                    f"ONCE = {str(tmp_path / 'once')!r}\n"
                    "def first_time():\n"
                    "    import os, torch.distributed as dist\n"
                    "    dist.barrier()  # both ranks look before either writes\n"
                    "    seen = os.path.exists(ONCE)\n"
                    "    dist.barrier()\n"
                    "    if not seen and dist.get_rank() == 0:\n"
                    "        open(ONCE, 'w').close()\n"
                    "    return not seen\n"
                    + body)
    return path


def test_a_hanging_rank_is_a_failure_and_the_next_check_still_runs(tmp_path):
    # rank 1 never comes to the all-reduce that rank 0 waits in: both hang until the grader stops them
    path = _write(tmp_path, """
import time
import torch.distributed as dist

def all_reduce_gradients(module):
    if first_time() and dist.get_rank() == 1:
        time.sleep(60)
    _solution.all_reduce_gradients(module)
""")
    report = grade("distributed", path, exercise=["5.2", "5.4"], timeout=60)
    hung = by_id(report, "5.2 every .grad becomes the mean over ranks")
    assert hung.status == "fail" and "did not finish" in hung.detail and "stopped" in hung.detail
    assert "same collective calls" in hung.hint
    after = by_id(report, "5.4 the value: summed loss x world size / global labelled count")
    assert after.passed, after.detail  # the ranks were restarted for it


def test_a_rank_that_returns_early_leaves_a_clear_failure(tmp_path):
    # rank 1 skips the all-reduce and returns: rank 0's collective loses its partner at once (no hang)
    path = _write(tmp_path, """
import torch.distributed as dist

def all_reduce_gradients(module):
    if dist.get_rank() == 0:
        _solution.all_reduce_gradients(module)
""")
    report = grade("distributed", path, exercise="5.2", timeout=60)
    first = report.results[0]
    assert first.status == "fail" and "lost its partner" in first.detail and "same collective calls" in first.hint


def test_a_rank_that_dies_is_a_failure_naming_how(tmp_path):
    path = _write(tmp_path, """
import os
import torch.distributed as dist

def global_token_mean_loss(logits, labels, ignore_index=-100):
    if first_time() and dist.get_rank() == 1:
        os._exit(3)
    return _solution.global_token_mean_loss(logits, labels, ignore_index)
""")
    report = grade("distributed", path, exercise="5.4", timeout=60)
    first = report.results[0]
    assert first.status == "fail" and "died" in first.detail and "exit code 3" in first.detail
    assert all(r.passed for r in report.results[1:])  # the ranks were restarted for the next checks


def _grade_in_fork(queue):
    report = grade("distributed", SOLUTION, exercise="5.2", timeout=60)
    queue.put([r.passed for r in report.results])


def test_a_forked_grading_child_starts_its_own_ranks():
    # The harness may run checks in a process forked from one whose ranks are running (they belong to
    # it): the child must start its own instead of talking to its parent's.
    grade("distributed", SOLUTION, exercise="5.1")  # this process now holds ranks
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_grade_in_fork, args=(queue,))
    child.start()
    passed = queue.get(timeout=240)
    child.join(30)
    assert passed and all(passed) and child.exitcode == 0
    assert grade("distributed", SOLUTION, exercise="5.1").all_passed  # the parent's ranks still serve it

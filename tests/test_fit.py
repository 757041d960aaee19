"""`python -m efftrain_lib.fit`: the capstone as a tool. The plan and its table, the run of the tiny model under
it (one process, spawned ranks, torchrun), and bad input: a clear message and a non-zero exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from efftrain_lib.fit import main, model_named
from efftrain_lib.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's parser.error
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_plan_for_7b_on_one_24_gb_gpu(capsys):
    code, out, _ = run_main(capsys, "--budget", "24GB", "--model", "llama-2-7b", "--effective-batch", "16",
                            "--seq-len", "2048")
    assert code == 0
    assert out.startswith("Plan for Llama-2-7B: budget 24.00 GB per device, 1 device(s), effective batch 16 x 2048")
    assert "predicted peak per device" in out and "predicted step time x" in out
    for row in ("plain step (nothing on)", "without LoRA", "just checkpointing (every layer)", "the seed's ladder"):
        assert row in out


@pytest.mark.parametrize("argv, words", [
    (["--budget", "24", "--model", "tiny"], "has no unit: say 24GB (10^9 bytes) or 24GiB (2^30 bytes)"),
    (["--budget=-3GB", "--model", "tiny"], "the budget must be positive"),
    (["--budget", "24GB", "--model", "llama-7b"], "unknown model 'llama-7b'; choose one of: tiny, "),
    (["--budget", "24GB", "--devices", "0"], "--devices must be a positive integer, got 0"),
    (["--budget", "24GB", "--devices", "2", "--effective-batch", "7"], "must be a multiple of devices"),
    (["--budget", "24GB", "--finetuning", "partial"], "finetuning must be a non-empty choice"),
    (["--budget", "24GB", "--model", "Llama-2-7B", "--run"], "--run trains the course's tiny model"),
    (["--budget", "24GB", "--steps", "0"], "--steps must be a positive integer"),
])
def test_bad_input_exits_2_with_a_clear_message(capsys, argv, words):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and words in err and out == ""


def test_nothing_fits_exits_1_and_says_what_the_smallest_needs(capsys):
    code, out, err = run_main(capsys, "--budget", "100KiB", "--model", "tiny")
    assert code == 1 and out == ""
    assert err.startswith("error: nothing fits in 0.098 MiB per device: the smallest plan needs 0.497 MiB")


def test_model_names_ignore_case_and_spaces():
    assert model_named("TINYLLAMA-1.1b")[0] == "TinyLlama-1.1B"
    assert model_named("125m (gpt-3 small shape)")[0] == "125M (GPT-3 Small shape)"


def test_run_trains_the_tiny_model_under_its_plan(capsys):
    code, out, _ = run_main(capsys, "--budget", "1.45MiB", "--model", "tiny", "--run", "--steps", "3")
    assert code == 0, out
    assert "step   3/3  loss" in out
    report = out[out.index("\ndevice ") + 1:]
    assert report.splitlines()[1].startswith("rank 0") and report.splitlines()[1].endswith("yes")
    assert "compared with the estimator's peak_bytes" in report and "compared with the estimator's allocator_peak" in report


def test_run_over_two_spawned_ranks(capsys):
    code, out, _ = run_main(capsys, "--budget", "1.45MiB", "--model", "tiny", "--devices", "2", "--effective-batch",
                            "16", "--run", "--steps", "2")
    assert code == 0, out
    lines = out.splitlines()
    assert any(line.startswith("rank 0") for line in lines) and any(line.startswith("rank 1") for line in lines)


def test_under_torchrun():
    # --train, not --run: torchrun's own parser reads --run as an abbreviation of its --run-path
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "efftrain_lib.fit",
               "--budget", "1.45MiB", "--model", "tiny", "--effective-batch", "16", "--train", "--steps", "2"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("Plan for tiny") == 1  # rank 0 speaks for both
    assert "2 device(s), effective batch 16 x 64 tokens" in proc.stdout
    assert "step   2/2" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("rank ")]
    assert [row.split()[1] for row in rows] == ["0", "1"] and all(row.endswith("yes") for row in rows)

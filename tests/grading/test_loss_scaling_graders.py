"""Chapter 3 (loss scaling): what the common proof of its graders needs (tests/grading/test_graders_proven.py
runs it: solutions and the library's hardened LossScaler in efftrain_lib/precision.py pass, stubs fail as
stubs, every mistake in tests/grading/mistakes/loss_scaling/ is caught and every check proven by one, the
CLI), and what only this chapter proves: the diagnosis of a wrong dynamic-scaling rule, that the combination
checks cover every pair of options, and that torchao's stochastic rounding passes Exercise 3.7's checks.
The graders compare with torch.amp.GradScaler("cpu") on tiny models: the proof runs in about a minute on
2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch
from grader_proofs import ChapterProof, uncovered_pairs

import efftrain_lib.grading.loss_scaling as graders
from efftrain_lib.grade import grade

PROOF = ChapterProof(
    "loss_scaling", exercises=frozenset({"3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7"}),
    notebook="notebooks/03_mixed_precision.ipynb", min_mistakes=6,
    # The list, by name.
    classics=frozenset({"tracker_not_reset_on_overflow", "growth_counts_overflow_steps", "step_on_inf",
                        "clip_before_unscale", "unscale_twice_silently", "step_unscales_again",
                        "scale_grows_to_inf", "seed_grad_scaler"}),
    # One source of truth: the hardened LossScaler and train_step meet the same graders.
    library="efftrain_lib/precision.py",
    cli_timeout=180,
)


def test_diagnosis_tells_the_wrong_rules_apart():
    # On the "consecutive" check's script every classic rule gives its own trajectory, so the hint names it.
    pattern = "FFIFFFFFNFFF"
    trajectories = [tuple(graders._simulate(pattern, rule)) for rule in ["correct", *graders._RULES]]
    assert len(set(trajectories)) == len(trajectories)
    for rule in graders._RULES:
        assert graders._diagnose(pattern, graders._simulate(pattern, rule)) == rule


def test_the_combination_checks_cover_every_pair_of_options():
    optimizers = [vars(case) for case in graders.OPTIMIZER_CASES]
    assert not uncovered_pairs(optimizers, {"explicit": [True, False], "overflow": ["none", "A", "B", "both"],
                                            "idle": [False, True], "groups": [1, 2]})
    factors = [dict(zip(("growth", "backoff", "interval"), case)) for case in graders.FACTOR_CASES]
    assert not uncovered_pairs(factors, {"growth": [2.0, 4.0, 8.0], "backoff": [0.5, 0.25, 0.125],
                                         "interval": [1, 2, 3]})
    steps = [vars(case) for case in graders.STEP_CASES]
    levels = {"dtype": [None, torch.bfloat16, torch.float16], "scaler": [None, "GradScaler", "LossScaler"],
              "clip": [False, True], "scheduler": [False, True], "overflow": [False, True]}
    assert not uncovered_pairs(steps, levels, allowed=lambda c: not (c["dtype"] == torch.float16 and c["scaler"] is None))
    # and the triple only fp16 makes: a skipped step with a scheduler running
    assert any(c["dtype"] == torch.float16 and c["overflow"] and c["scheduler"] for c in steps)


TORCHAO_ROUNDING = """
import torch
from torchao.optim.quant_utils import _fp32_to_bf16_sr


def stochastic_round_to_bf16(x):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError("a float32 tensor, please")  # the exercise's contract; the rounding is torchao's
    return _fp32_to_bf16_sr(x)
"""


def test_torchao_stochastic_rounding_passes_exercise_3_7(tmp_path):
    # The checks' reference is the definition (the two bf16 neighbours from round-to-nearest and nextafter, the
    # distance ratio in float64); the real implementation, torchao's (its bf16 AdamW's), agrees with it.
    pytest.importorskip("torchao")
    (tmp_path / "loss_scaling.py").write_text(TORCHAO_ROUNDING)
    report = grade("loss_scaling", tmp_path, exercise="3.7")
    assert len(report.results) == 5
    assert report.all_passed, [(r.check, r.detail) for r in report.results if not r.passed]

"""Chapter 3 (loss scaling): what the common proof of its graders needs (tests/grading/test_graders_proven.py
runs it: solutions and the library's hardened LossScaler in efftrain_lib/precision.py pass, stubs fail as
stubs, every mistake in tests/grading/mistakes/loss_scaling/ is caught and every check proven by one, the
CLI), and what only this chapter proves: the diagnosis of a wrong dynamic-scaling rule.
The graders compare with torch.amp.GradScaler("cpu") on tiny models: the proof runs in about a minute on
2 CPU cores.
"""

from __future__ import annotations

from grader_proofs import ChapterProof

import efftrain_lib.grading.loss_scaling as graders

PROOF = ChapterProof(
    "loss_scaling", exercises=frozenset({"3.1", "3.2", "3.3", "3.4", "3.5", "3.6"}),
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

"""Chapter 4 (gradient accumulation): what the common proof of its graders needs
(tests/grading/test_graders_proven.py runs it: solutions and the library in efftrain_lib/accumulation.py
pass, stubs fail as stubs, the CLI), and how strict its catalog is: every mistake in
tests/grading/mistakes/accumulation/ fails exactly the checks it declares, each with a plain "fail" and a
message that names the mistake (words may be empty for a check that only sees the mistake's consequences,
e.g. the end-to-end training check); a warning the learner's code makes torch emit reaches the learner; and
the combination checks cover every pair of options.
The graders use a token-wise MLP of a few hundred parameters: the whole proof runs in seconds.
"""

from __future__ import annotations

import torch
from grader_proofs import ChapterProof, by_id, grade_mistake, uncovered_pairs

import efftrain_lib.grading.accumulation_support as cases_of

PROOF = ChapterProof(
    "accumulation", exercises=frozenset({"4.1", "4.2", "4.3"}), notebook="notebooks/04_gradient_accumulation.ipynb",
    min_mistakes=6,
    # the classic mistakes
    classics=frozenset({"loss_not_divided", "mean_of_means", "partial_window_divided_by_k",
                        "zero_grad_inside_window", "scheduler_per_micro_batch", "scaler_update_per_micro_batch"}),
    library="efftrain_lib",  # efftrain_lib/accumulation.py
    exact_failures=True, failures_are_fails=True,
)


def test_a_warning_from_the_learners_code_is_shown_with_its_check():
    # The checks run in a child process: what they print, warnings included, comes back with the check
    # (here torch's warning that the scheduler stepped before the optimizer), not into the grader's output.
    _, report = grade_mistake(PROOF, PROOF.mistakes_dir / "scheduler_per_micro_batch.py")
    result = by_id(report, "4.1 scheduler: one step per optimizer step")
    assert not result.passed and "Detected call of `lr_scheduler.step()` before `optimizer.step()`" in result.output


def test_the_combination_checks_cover_every_pair_of_options():
    fp16_alone = lambda c: not (c["dtype"] == torch.float16 and not c["scaler"])  # noqa: E731 - fp16 needs a scaler
    options = {"dtype": [None, torch.bfloat16, torch.float16], "scaler": [False, True], "clip": [False, True],
               "scheduler": [False, True]}
    cases = {"step": (cases_of.STEP_CASES, {**options, "window": list(cases_of.WINDOWS)}),
             "accumulator": (cases_of.ACCUMULATOR_CASES, options),
             "stream": (cases_of.STREAM_CASES, {**options, "stream": [True, False]})}
    for name, (given, levels) in cases.items():
        assert not uncovered_pairs([vars(c) for c in given], levels, allowed=fp16_alone), name

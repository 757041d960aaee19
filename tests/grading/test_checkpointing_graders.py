"""Chapter 2 (gradient checkpointing): what the common proof of its graders needs
(tests/grading/test_graders_proven.py runs it: solutions and library pass, stubs fail as stubs, every mistake
in tests/grading/mistakes/checkpointing/ is caught and every check proven by one, the CLI). No test only this
chapter needs.
Tiny shapes: a grade takes a few seconds on 2 CPU cores, most of it torch's references for every combination
of options, computed once per grading process (prepare()).
"""

from __future__ import annotations

from grader_proofs import ChapterProof

PROOF = ChapterProof(
    "checkpointing", exercises=frozenset({"2.1", "2.2", "2.3"}), notebook="notebooks/02_gradient_checkpointing.ipynb",
    min_mistakes=12,
    # The list: RNG not restored, recompute without grad enabled, parameter gradients lost,
    # inputs not detached before recompute, forward that keeps its graph anyway; and more.
    classics=frozenset({"rng_not_restored", "recompute_without_grad", "param_grads_lost", "inputs_not_detached",
                        "forward_keeps_graph", "all_inputs_require_grad"}),
    library="efftrain_lib",  # efftrain_lib/checkpointing.py
    min_checks=15,
    cli_shows=("Exercise 2.1: checkpoint", "Exercise 2.2: checkpoint_sequential",
               "Exercise 2.3: checkpoint_non_reentrant"),
)

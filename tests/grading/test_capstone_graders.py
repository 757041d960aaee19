"""Chapter 7 (the capstone): what the common proof of its graders needs (tests/grading/test_graders_proven.py
runs it: the solutions and the library's planner (efftrain_lib/capstone.py gathers its exercise API) pass,
the stubs fail as stubs, the CLI), and how strict its catalog is: every mistake in
tests/grading/mistakes/capstone/ fails exactly the checks it declares, each with a plain "fail" and a message
that names the mistake (a mistake in Exercise 7.1's peak also sends 7.2 and 7.3 back to it). The references
are the course's estimator (its allocator peak) and brute force over small search spaces.
"""

from __future__ import annotations

from grader_proofs import ChapterProof

PROOF = ChapterProof(
    "capstone", exercises=frozenset({"7.1", "7.2", "7.3"}), notebook="notebooks/07_capstone.ipynb",
    min_mistakes=10,
    # the and the seed's classic mistakes
    classics=frozenset({"accounting_peak", "effective_batch_per_device", "accumulation_ignored", "smallest_not_fastest",
                        "seed_ladder", "ignores_budget", "no_error_returns_none", "no_budget_check"}),
    library="efftrain_lib",  # efftrain_lib/capstone.py: the planner's exercise API
    exact_failures=True, failures_are_fails=True,
)

"""Chapter 0 (memory_math): what the common proof of its graders needs (tests/grading/test_graders_proven.py
runs it: solutions and the library's hardened versions in efftrain_lib/memory.py pass, stubs fail as stubs,
every mistake in tests/grading/mistakes/memory_math/ is caught, with a plain "fail", and every check proven
by one, the CLI). No test only this chapter needs.
Pure arithmetic: the whole proof runs in a few seconds.
"""

from __future__ import annotations

from grader_proofs import ChapterProof

PROOF = ChapterProof(
    "memory_math", exercises=frozenset({"0.1", "0.2", "0.3"}), notebook="notebooks/00_memory_anatomy.ipynb",
    min_mistakes=15, classics=frozenset({"adam_one_state", "master_weights_forgotten", "lora_counted_dkr"}),
    library="efftrain_lib/memory.py",
    failures_are_fails=True,  # arithmetic: a mistake gives a wrong number, never an error
)

"""Chapter 6 (QLoRA): what the common proof of its graders needs (tests/grading/test_graders_proven.py runs
it: solutions and the library in efftrain_lib/qlora.py pass, stubs fail as stubs, the CLI), and how strict
its catalog is: every mistake in tests/grading/mistakes/qlora/ fails exactly the checks it declares, each
with a plain "fail" and a message that names the mistake. The references are torchao's NF4 (to_nf4),
bitsandbytes' published NF4 table and the library's LoRA layer; torchao is imported once per grade.
"""

from __future__ import annotations

from grader_proofs import ChapterProof

PROOF = ChapterProof(
    "qlora", exercises=frozenset({"6.1", "6.2", "6.3", "6.4"}), notebook="notebooks/06_qlora.ipynb",
    min_mistakes=6,
    # the classic mistakes
    classics=frozenset({"nearest_code_by_index", "absmax_whole_tensor", "mean_not_removed", "base_trainable",
                        "dequantized_weight_saved", "b_nonzero_init"}),
    library="efftrain_lib",  # efftrain_lib/qlora.py
    exact_failures=True, failures_are_fails=True,
)

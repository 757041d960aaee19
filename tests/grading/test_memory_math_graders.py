"""Chapter 0 (memory_math): what the common proof of its graders needs (tests/grading/test_graders_proven.py
runs it: solutions and the library's hardened versions in efftrain_lib/memory.py pass, stubs fail as stubs,
every mistake in tests/grading/mistakes/memory_math/ is caught, with a plain "fail", and every check proven
by one, the CLI), and what only this chapter needs: Exercise 0.4's reference is torch.profiler's measurement,
so the test below holds the library's rule to it on every configuration the grader measures.
Arithmetic, and the profiler once per grading process (prepare()): the whole proof runs in seconds.
"""

from __future__ import annotations

from grader_proofs import ChapterProof

from efftrain_lib.grading import memory_math_support as support
from efftrain_lib.memory import optimizer_step_temporaries

PROOF = ChapterProof(
    "memory_math", exercises=frozenset({"0.1", "0.2", "0.3", "0.4"}), notebook="notebooks/00_memory_anatomy.ipynb",
    min_mistakes=15, classics=frozenset({"adam_one_state", "master_weights_forgotten", "lora_counted_dkr"}),
    library="efftrain_lib/memory.py",
    failures_are_fails=True,  # arithmetic: a mistake gives a wrong number, never an error
)


def test_the_step_rule_is_what_the_profiler_measures_everywhere_the_grader_looks():
    # The grader's reference for 0.4 is the measurement; the library's rule (and the solution, which the
    # proof grades) must meet it on every one of the 72 configurations, within the step counters' bytes.
    for optimizer, impl, numels, state_bytes in support.step_configurations():
        measured = support.measured_step_temporaries(optimizer, impl, numels, state_bytes)
        predicted = optimizer_step_temporaries(optimizer, impl, list(numels), state_bytes)
        assert predicted <= measured <= predicted + support.STEP_SCALARS, (optimizer, impl, numels, state_bytes)

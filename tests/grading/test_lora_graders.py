"""Chapter 1 (LoRA): what the common proof of its graders needs (tests/grading/test_graders_proven.py runs
it: solutions and library pass, stubs fail as stubs, every mistake in tests/grading/mistakes/lora/ is caught
and every check proven by one, the CLI), and what only this chapter proves: a hanging implementation is
reported as timed out.
Tiny shapes and PEFT imported once: the whole proof runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json

from grader_proofs import ROOT, ChapterProof, cli

PROOF = ChapterProof(
    "lora", exercises=frozenset({"1.1", "1.2", "1.3", "1.4", "1.5"}), notebook="notebooks/01_lora.ipynb",
    min_mistakes=8,
    library="efftrain_lib",  # efftrain_lib/lora.py, the library's hardened LoRA
    min_checks=20,  # the grader runs its whole catalog of checks
)
HANG = PROOF.mistakes_dir / "hangs_in_merge.py"  # asks for a short GRADE_TIMEOUT in the catalog's proof


def test_cli_reports_a_hang_as_timed_out():
    # Bounded by cli()'s own timeout (the process is killed past it); no wall-clock assertion: machines are noisy.
    proc, _ = cli("lora", "--impl", str(HANG.relative_to(ROOT)), "--exercise", "1.2", "--timeout", "0.5", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["total"] == 4 and {r["status"] for r in data["results"]} == {"timeout"}
    assert all("timed out after 0.5 s" in r["detail"] for r in data["results"])

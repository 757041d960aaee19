"""One source of truth: the library's hardened LoRA must pass the same graders as the reference solution."""

from efftrain_lib.grade import grade


def test_the_library_lora_passes_every_lora_check():
    report = grade("lora", "efftrain_lib")
    failures = [(r.exercise, r.check, r.detail) for r in report.results if not r.passed]
    assert len(report.results) >= 20, "the LoRA grader should run its whole catalog of checks"
    assert report.all_passed, f"efftrain_lib/lora.py fails the LoRA graders: {failures}"

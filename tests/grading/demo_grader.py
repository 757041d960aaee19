"""A throwaway grader for tests/grading/test_grade_harness.py: chapter "demo", graded file demo.py holding
add(a, b) and mul(a, b). A module of its own (not one built inside a test): the checks run in a child
process, which imports the grader by name."""

from efftrain_lib.grading import Checks, failed, passed

EXERCISES = {"9.1": "add", "9.2": "mul"}
CHECKS = Checks()


@CHECKS.add("9.1", "add works", hint="add(a, b) returns a + b")
def add_returns_the_sum(impl):
    got = impl.add(2, 3)
    return passed("add(2, 3) == 5") if got == 5 else failed(f"add(2, 3) = {got}, expected 5", "a + b")


@CHECKS.add("9.2", "mul works", hint="mul(a, b) returns a * b")
def mul_returns_the_product(impl):
    got = impl.mul(2, 3)
    return passed("mul(2, 3) == 6") if got == 6 else failed(f"mul(2, 3) = {got}, expected 6", "a * b")

"""Mistake: base_format not passed: QLoRA plans are estimated with a full-precision base."""

from dataclasses import replace
from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "QLoRA's 4-bit base": ['4-bit base ignored'],
    'the plan fits the budget': ['Exercise 7.1'],
    'the plan is the fastest that fits': ['Exercise 7.1'],
    'nothing fits: a clear error with the smallest need': ['Exercise 7.1'],
    "the least budget is the smallest plan's peak": ['Exercise 7.1'],
}


_right = _solution.peak_bytes


def _peak_bytes(plan, model_config):
    # BUG: base_format not passed: a full-precision base
    return _right(replace(plan, base_format="same"), model_config)


_solution.peak_bytes = _peak_bytes

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

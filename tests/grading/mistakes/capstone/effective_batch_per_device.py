"""Mistake: the effective batch (all devices) put on every device: batch_size is per device."""

from dataclasses import replace
from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'several devices and ZeRO stages': ['effective batch on every device'],
    'the plan is the fastest that fits': ['Exercise 7.1'],
    'nothing fits: a clear error with the smallest need': ['Exercise 7.1'],
    "the least budget is the smallest plan's peak": ['Exercise 7.1'],
}


_right = _solution.peak_bytes


def _peak_bytes(plan, model_config):
    # BUG: the effective batch (every device's sequences) on each device
    return _right(replace(plan, micro_batch_size=plan.micro_batch_size * plan.devices), model_config)


_solution.peak_bytes = _peak_bytes

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

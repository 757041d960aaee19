"""Mistake: accumulation treated as free: only one micro-batch is estimated (batch_size=micro_batch_size), so the
moment a later micro-batch runs with every gradient allocated is missed."""

from dataclasses import replace
from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'accumulation: micro-batches of the per-device batch': ['accumulation ignored'],
    "QLoRA's 4-bit base": ['accumulation ignored'],
    'several devices and ZeRO stages': ['accumulation ignored'],
    'the plan fits the budget': ['Exercise 7.1'],
    'nothing fits: a clear error with the smallest need': ['Exercise 7.1'],
    "the least budget is the smallest plan's peak": ['Exercise 7.1'],
}


_right = _solution.peak_bytes


def _peak_bytes(plan, model_config):
    # BUG: one micro-batch estimated, as if accumulation were free
    return _right(replace(plan, accumulation_steps=1), model_config)


_solution.peak_bytes = _peak_bytes

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

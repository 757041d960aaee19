"""Mistake: plans for one device whatever devices says: the plan is for the wrong machine."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'the plan fits the budget': ['devices ignored'],
    'the plan is the fastest that fits': ['devices ignored'],
    'several devices: the plan keeps them and the effective batch': ['devices ignored'],
    'nothing fits: a clear error with the smallest need': ['smallest plan needs'],
    'bad input gets clear errors': ['devices 0', 'no error'],
}


def _choose_plan(model_config, budget_bytes, devices=1, effective_batch=8, *, seq_len=None, space=None, costs=None):
    # BUG: devices dropped (the whole effective batch on one device)
    return _original(model_config, budget_bytes, 1, effective_batch, seq_len=seq_len, space=space, costs=costs)


_original = _solution.choose_plan
_solution.choose_plan = _choose_plan

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

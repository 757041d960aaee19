"""Mistake: the costs are not passed to step_time: the default (a GPU's) time model decides on every machine."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'the plan is the fastest that fits': ['costs ignored'],
}


def _choose_plan(model_config, budget_bytes, devices=1, effective_batch=8, *, seq_len=None, space=None, costs=None):
    return _original(model_config, budget_bytes, devices, effective_batch, seq_len=seq_len, space=space,
                     costs=None)  # BUG: the given costs are dropped


_original = _solution.choose_plan
_solution.choose_plan = _choose_plan

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

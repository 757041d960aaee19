"""Mistake: nothing fits, said without what the smallest plan needs."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'nothing fits: a clear error with the smallest need': ['smallest plan needs'],
}


def _choose_plan(model_config, budget_bytes, devices=1, effective_batch=8, *, seq_len=None, space=None, costs=None):
    try:
        return _original(model_config, budget_bytes, devices, effective_batch, seq_len=seq_len, space=space,
                         costs=costs)
    except ValueError as error:
        if "nothing fits" in str(error):
            raise ValueError("nothing fits in the budget") from None  # BUG: how much would?
        raise


_original = _solution.choose_plan
_solution.choose_plan = _choose_plan

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

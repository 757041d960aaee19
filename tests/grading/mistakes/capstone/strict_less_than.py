"""Mistake: a plan fits only below the budget (<), so a plan exactly at the budget is refused."""

from pathlib import Path

from efftrain_lib.grade import load_module
from efftrain_lib.planner import step_time

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "a budget equal to a plan's peak fits": ['<=, not <'],
}


def _choose_plan(model_config, budget_bytes, devices=1, effective_batch=8, *, seq_len=None, space=None, costs=None):
    _solution.check_budget(budget_bytes)
    peaks = _solution.plan_peaks(model_config, devices, effective_batch, seq_len, space)
    fitting = [plan for plan, peak in peaks.items() if peak < budget_bytes]  # BUG: < instead of <=
    if not fitting:
        raise ValueError(f"nothing fits: the smallest plan needs {min(peaks.values()):,} bytes")
    return min(fitting, key=lambda plan: (step_time(plan, model_config, costs), peaks[plan]))


_solution.choose_plan = _choose_plan

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

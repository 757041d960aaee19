"""Mistake: the least budget taken as the peak of the plan with every technique on (micro-batch 1, every layer
checkpointed), which is not the smallest at short sequences."""

from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "the least budget is the smallest plan's peak": ['every technique on'],
}


def _minimum_budget(model_config, devices=1, effective_batch=8, *, seq_len=None, space=None):
    peaks = _solution.plan_peaks(model_config, devices, effective_batch, seq_len, space)
    most = max(len(p.techniques) for p in peaks)
    top = max(p.checkpointed_layers for p in peaks)
    # BUG: assumes the plan with the most techniques and every layer checkpointed is the smallest
    return min(peak for p, peak in peaks.items() if len(p.techniques) == most and p.checkpointed_layers == top)


_solution.minimum_budget = _minimum_budget

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

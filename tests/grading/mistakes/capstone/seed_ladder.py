"""Mistake: the seed's ladder: mixed precision, then checkpointing every layer, then accumulation, then LoRA,
stopping at the first rung that fits."""

from dataclasses import replace
from pathlib import Path

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    'the plan is the fastest that fits': ["seed's ladder"],
    "a budget equal to a plan's peak fits": ["seed's ladder"],
}


def _choose_plan(model_config, budget_bytes, devices=1, effective_batch=8, *, seq_len=None, space=None, costs=None):
    _solution.check_budget(budget_bytes)
    peaks = _solution.plan_peaks(model_config, devices, effective_batch, seq_len, space)
    if min(peaks.values()) > budget_bytes:
        raise ValueError(f"nothing fits: the smallest plan needs {min(peaks.values()):,} bytes")
    # BUG: a fixed order (mixed precision, checkpointing, accumulation, LoRA), not the fastest plan that fits
    plain = max((p for p in peaks if not p.techniques), key=lambda p: p.micro_batch_size)
    top = max(p.checkpointed_layers for p in peaks)
    checkpointed = replace(plain, precision="bf16_autocast", checkpointed_layers=top)
    accumulated = [replace(checkpointed, micro_batch_size=m, accumulation_steps=plain.micro_batch_size // m)
                   for m in range(plain.micro_batch_size - 1, 0, -1) if plain.micro_batch_size % m == 0]
    fits = [p for p in accumulated if p in peaks and peaks[p] <= budget_bytes] or accumulated[-1:]
    rungs = [plain, replace(plain, precision="bf16_autocast"), checkpointed] + fits[:1]
    rungs += [replace(rungs[-1], precision="bf16", lora_rank=8)]
    for rung in rungs:
        if rung in peaks and peaks[rung] <= budget_bytes:
            return rung
    return min(peaks, key=peaks.get)


_solution.choose_plan = _choose_plan

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

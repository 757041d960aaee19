"""Mistake: the accounting peak (held tensors, .peak_bytes) instead of the allocator peak: the temporaries and the
optimizer step's buffers are left out, so plans that do not fit look as if they did."""

from pathlib import Path

from efftrain_lib.grade import load_module
from efftrain_lib.memory import estimate_training_memory

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "capstone.py")

# Every check this mistake fails, and words its message (discrepancy + hint) must contain.
CAUGHT_BY = {
    "one device: the estimator's allocator peak": ['accounting peak'],
    'accumulation: micro-batches of the per-device batch': ['accounting peak'],
    "QLoRA's 4-bit base": ['accounting peak'],
    'several devices and ZeRO stages': ['accounting peak'],
    'the plan fits the budget': ['accounting peak'],
    'nothing fits: a clear error with the smallest need': ['accounting peak'],
    "the least budget is the smallest plan's peak": ['accounting peak'],
}


def _peak_bytes(plan, model_config):
    estimate = estimate_training_memory(
        model_config, batch_size=plan.micro_batch_size * plan.accumulation_steps,
        micro_batch_size=plan.micro_batch_size, seq_len=plan.seq_len, precision=plan.precision,
        optimizer=plan.optimizer, lora_rank=plan.lora_rank, lora_targets=plan.lora_targets,
        base_format=plan.base_format, checkpointing=plan.checkpointed_layers, devices=plan.devices,
        sharding_stage=plan.sharding_stage)
    return estimate.peak_bytes  # BUG: what accounting sees, not what the device must hold


_solution.peak_bytes = _peak_bytes

peak_bytes, choose_plan, minimum_budget = _solution.peak_bytes, _solution.choose_plan, _solution.minimum_budget

"""Chapter 7 reference solutions: a plan's peak, the fastest plan that fits, the least budget that trains.

The whiteboard version: short and commented. The hardened version (plan validation, a search that
estimates as few plans as it can, the explanation table, the budget frontier) lives in
efftrain_lib/planner.py. Grade these with
    python -m efftrain_lib.grade capstone --impl solutions
"""

import math

from efftrain_lib.memory import estimate_training_memory
from efftrain_lib.planner import SearchSpace, step_time


# Exercise 7.1: peak_bytes -------------------------------------------------------------------------
def peak_bytes(plan, model_config):
    """The course's estimator, asked about one device of the plan."""
    estimate = estimate_training_memory(
        model_config,
        batch_size=plan.micro_batch_size * plan.accumulation_steps,  # per device, per optimizer step
        micro_batch_size=plan.micro_batch_size,  # accumulation: the gradients live on while later micro-batches run
        seq_len=plan.seq_len,
        precision=plan.precision,
        optimizer=plan.optimizer,
        lora_rank=plan.lora_rank,
        lora_targets=plan.lora_targets,
        base_format=plan.base_format,  # QLoRA's 4-bit base
        checkpointing=plan.checkpointed_layers,
        devices=plan.devices,
        sharding_stage=plan.sharding_stage,  # ZeRO divides the model states by the devices
    )
    # Not .peak_bytes (the held tensors, what accounting sees): the device must also hold the temporaries
    # of each op and the optimizer step's buffers.
    return estimate.allocator_peak


# Exercise 7.2: choose_plan ------------------------------------------------------------------------
def check_budget(budget_bytes):
    if not (isinstance(budget_bytes, (int, float)) and math.isfinite(budget_bytes) and budget_bytes > 0):
        raise ValueError(f"budget_bytes must be a positive number of bytes, got {budget_bytes!r}")


def plan_peaks(model_config, devices, effective_batch, seq_len, space):
    """Every plan of the space (default SearchSpace()) with its peak; plans are values, usable as keys."""
    space = SearchSpace() if space is None else space
    plans = space.plans(model_config, devices=devices, effective_batch=effective_batch, seq_len=seq_len)
    return {plan: peak_bytes(plan, model_config) for plan in plans}


def choose_plan(model_config, budget_bytes, devices=1, effective_batch=8, *, seq_len=None, space=None, costs=None):
    """Every plan of the space, those that fit, the fastest of them."""
    check_budget(budget_bytes)  # 0, negative or NaN is bad input, not "nothing fits"
    peaks = plan_peaks(model_config, devices, effective_batch, seq_len, space)
    fitting = [plan for plan, peak in peaks.items() if peak <= budget_bytes]  # <=: exactly the budget fits
    if not fitting:
        raise ValueError(f"nothing fits in {budget_bytes:,.0f} bytes per device: the smallest plan needs "
                         f"{min(peaks.values()):,} bytes")
    # Not the smallest plan (that turns on everything and is slow): the fastest that fits.
    return min(fitting, key=lambda plan: (step_time(plan, model_config, costs), peaks[plan]))


# Exercise 7.3: minimum_budget ---------------------------------------------------------------------
def minimum_budget(model_config, devices=1, effective_batch=8, *, seq_len=None, space=None):
    """The smallest peak over the plans: not necessarily the plan with every technique on (a checkpoint
    keeps its input and the RNG state, more than a short sequence's activations)."""
    return min(plan_peaks(model_config, devices, effective_batch, seq_len, space).values())

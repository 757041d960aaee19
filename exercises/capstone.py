"""Chapter 7 exercises: fit a model to a memory budget with every technique at once.

Fill in the three functions below, then grade them, from notebooks/07_capstone.ipynb:
    from efftrain_lib.grade import check; check("capstone")
or from a terminal at the repository root:
    python -m efftrain_lib.grade capstone
Keep the names and signatures: the graders call exactly these (and compare with the course's estimator).
solutions/capstone.py has answers (try first!).

What the library gives you (efftrain_lib.planner): `Plan` (one step's techniques: seq_len,
micro_batch_size, accumulation_steps, precision, lora_rank, lora_targets, base_format,
checkpointed_layers, devices, sharding_stage, optimizer), `SearchSpace(...).plans(model_config, devices=,
effective_batch=, seq_len=)` (the plans the chapter defines) and `step_time(plan, model_config, costs)`
(the predicted step time relative to the plain step). The estimator is
efftrain_lib.memory.estimate_training_memory.
"""

from efftrain_lib.memory import estimate_training_memory  # noqa: F401
from efftrain_lib.planner import SearchSpace, step_time  # noqa: F401


def peak_bytes(plan, model_config):
    """The predicted peak of one device running `plan` (an int, bytes): the course's estimator's figure.

    Map the plan onto estimate_training_memory's arguments (batch_size is per device and per optimizer
    step; the micro-batches, the 4-bit base, checkpointing, devices and ZeRO stage all matter) and return
    the figure a device's allocator must hold, temporaries and the optimizer step included.
    """
    raise NotImplementedError(
        "Exercise 7.1: peak_bytes (see notebooks/07_capstone.ipynb, 'Exercise 7.1: a plan's peak')"
    )


def choose_plan(model_config, budget_bytes, devices=1, effective_batch=8, *, seq_len=None, space=None, costs=None):
    """The fastest plan of `space` (default SearchSpace()) whose peak_bytes fits `budget_bytes` per device.

    Plans for `devices` devices and `effective_batch` sequences of `seq_len` tokens per optimizer step;
    "fastest": the least step_time(plan, model_config, costs). A budget exactly equal to a plan's peak fits.
    Errors (ValueError, with a message that says what was wrong): a budget that is not a positive number;
    nothing fits (say what the smallest plan needs, in bytes or with a unit); bad devices or batch sizes.
    """
    raise NotImplementedError(
        "Exercise 7.2: choose_plan (see notebooks/07_capstone.ipynb, 'Exercise 7.2: choose the plan')"
    )


def minimum_budget(model_config, devices=1, effective_batch=8, *, seq_len=None, space=None):
    """The least budget per device (bytes) at which some plan of `space` (default SearchSpace()) fits."""
    raise NotImplementedError(
        "Exercise 7.3: minimum_budget (see notebooks/07_capstone.ipynb, 'Exercise 7.3: the least memory that trains')"
    )

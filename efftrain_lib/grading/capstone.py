"""Graders for Chapter 7 (the capstone): exercises 7.1-7.3 in <impl>/capstone.py.

Behaviour only, through the exercise API:
  peak_bytes(plan, model_config) -> int
  choose_plan(model_config, budget_bytes, devices=1, effective_batch=8, *, seq_len=None, space=None, costs=None) -> Plan
  minimum_budget(model_config, devices=1, effective_batch=8, *, seq_len=None, space=None) -> int

The reference is the course's estimator itself (efftrain_lib.memory.estimate_training_memory, its
allocator peak), called here with the plan's fields, and the library's step-time model
(efftrain_lib.planner.step_time); feasibility and optimality are checked by brute force over small search
spaces (tens of plans) of two tiny models. Peaks are integers: equality is exact. Step times are compared
within 1e-9 (the same floats, summed in the same order). A "nothing fits" message must name the smallest
plan's need within 1% (in bytes, or with a unit such as MiB or GB).

When a figure is wrong, the grader recomputes what the classic mistakes would give (the accounting peak,
the effective batch on every device, accumulation or the 4-bit base or sharding left out, the smallest plan
instead of the fastest, the seed's ladder, the budget ignored, costs ignored) and names the one that matches.
"""

from __future__ import annotations

import functools
import re

from efftrain_lib.grading import Checks, failed, passed
from efftrain_lib.memory import estimate_training_memory
from efftrain_lib.models import TinyConfig
from efftrain_lib.planner import Plan, SearchSpace, StepCosts, seed_ladder, step_time

EXERCISES = {
    "7.1": "peak_bytes: a plan's predicted peak per device",
    "7.2": "choose_plan: the fastest plan that fits the budget",
    "7.3": "minimum_budget: the least memory that trains",
}
CHECKS = Checks()

TIME_TOLERANCE = 1e-9
MESSAGE_TOLERANCE = 0.01

#: the pretrained tiny transformer's shape, and a second one (3 layers, 48 wide, 32 positions)
TINY = TinyConfig(vocab_size=96, hidden_size=64, n_layers=4, n_heads=4, ffn_dim=172, max_seq_len=64)
OTHER = TinyConfig(vocab_size=128, hidden_size=48, n_layers=3, n_heads=3, ffn_dim=128, max_seq_len=32)
#: costs like a CPU's: mixed precision slower, micro-batches dear (what the notebook measures)
CPU_LIKE = StepCosts(mixed_precision_speedup=0.7, dequantize_overhead=0.3, micro_batch_overhead=0.2,
                     source="a CPU-like machine")

SMALL = SearchSpace(checkpointing=(0.0, 0.5, 1.0))
TWO_DEVICES = SearchSpace(finetuning=("full", "lora"), checkpointing=(0.0, 1.0), sharding_stages=(0, 2, 3))
FULL_ONLY = SearchSpace(finetuning=("full",), checkpointing=(0.0, 0.5, 1.0))


def _estimate(plan: Plan, model, **changes):
    settings = dict(batch_size=plan.per_device_batch, micro_batch_size=plan.micro_batch_size, seq_len=plan.seq_len,
                    precision=plan.precision, optimizer=plan.optimizer, lora_rank=plan.lora_rank,
                    lora_targets=plan.lora_targets, base_format=plan.base_format,
                    checkpointing=plan.checkpointed_layers, devices=plan.devices, sharding_stage=plan.sharding_stage)
    settings.update(changes)
    return estimate_training_memory(model, **settings)


@functools.lru_cache(maxsize=None)
def _peak(plan: Plan, model) -> int:
    return _estimate(plan, model).allocator_peak


# ------------------------------------------------------------------------- Exercise 7.1: peak --
def _peak_mistake(got, plan: Plan, model) -> str:
    """Name the mistake whose figure equals `got`."""
    guesses = [
        (lambda: _estimate(plan, model).peak_bytes,
         "the accounting peak (held tensors, .peak_bytes): the device must also hold each op's temporaries and "
         "the optimizer step's buffers, use the estimate's allocator_peak"),
        (lambda: _estimate(plan, model, batch_size=plan.effective_batch,
                           micro_batch_size=plan.micro_batch_size * plan.devices).allocator_peak,
         "the effective batch on every device: batch_size is per device (micro_batch_size x accumulation_steps)"),
        (lambda: _estimate(plan, model, batch_size=plan.effective_batch, micro_batch_size=None).allocator_peak,
         "the effective batch on every device: batch_size is per device (micro_batch_size x accumulation_steps)"),
        (lambda: _estimate(plan, model, batch_size=plan.micro_batch_size, micro_batch_size=None).allocator_peak,
         "accumulation ignored: batch_size=micro_batch_size misses the moment a later micro-batch runs with every "
         "gradient already allocated; pass batch_size=micro x steps and micro_batch_size"),
        (lambda: _estimate(plan, model, micro_batch_size=None).allocator_peak,
         "micro_batch_size not passed: the estimator then runs the whole per-device batch at once"),
        (lambda: _estimate(plan, model, base_format="same").allocator_peak,
         "the 4-bit base ignored: pass base_format (QLoRA's nf4_dq stores 4.127 bits per weight)"),
        (lambda: _estimate(plan, model, devices=1, sharding_stage=0).allocator_peak,
         "sharding ignored: pass devices and sharding_stage (ZeRO divides the model states by the devices)"),
        (lambda: _estimate(plan, model, sharding_stage=0).allocator_peak,
         "sharding ignored: pass sharding_stage (ZeRO divides the model states by the devices)"),
        (lambda: _estimate(plan, model, checkpointing=False).allocator_peak,
         "checkpointing ignored: pass checkpointing=plan.checkpointed_layers"),
    ]
    for guess, name in guesses:
        try:
            if guess() == got:
                return name
        except ValueError:
            continue
    return "call estimate_training_memory with every field of the plan and return its allocator_peak"


def _peak_check(impl, cases):
    for label, plan, model in cases:
        got = impl.peak_bytes(plan, model)
        want = _peak(plan, model)
        if isinstance(got, bool) or not isinstance(got, int):
            return failed(f"{label}: returned {type(got).__name__} {got!r}", "return the estimate's bytes as an int")
        if got != want:
            return failed(f"{label}: {got:,} bytes, the estimator's allocator peak is {want:,}",
                          _peak_mistake(got, plan, model))
    return passed(f"{len(cases)} plans, every peak equal to the estimator's allocator peak")


@CHECKS.add("7.1", "one device: the estimator's allocator peak",
            hint="estimate_training_memory(model_config, batch_size=..., precision=..., ...).allocator_peak")
def one_device_the_estimators_allocator_peak(impl):
    return _peak_check(impl, [
        ("plain fp32, tiny model", Plan(64, 4), TINY),
        ("LoRA, bf16 model, 2 layers checkpointed", Plan(64, 4, precision="bf16", lora_rank=8, checkpointed_layers=2),
         TINY),
        ("full, bf16 autocast, every layer checkpointed", Plan(32, 2, precision="bf16_autocast", checkpointed_layers=3),
         OTHER),
    ])


@CHECKS.add("7.1", "accumulation: micro-batches of the per-device batch",
            hint="batch_size = micro_batch_size x accumulation_steps, and micro_batch_size = the plan's")
def accumulation_micro_batches_of_the_per_device_batch(impl):
    return _peak_check(impl, [
        ("full fp32, 4 micro-batches of 2", Plan(64, 2, 4), TINY),
        ("LoRA bf16, 8 micro-batches of 1, 2 layers checkpointed",
         Plan(32, 1, 8, precision="bf16", lora_rank=4, checkpointed_layers=2), OTHER),
    ])


@CHECKS.add("7.1", "QLoRA's 4-bit base",
            hint="pass base_format=plan.base_format: the frozen base is stored in 4 bits")
def qloras_4_bit_base(impl):
    return _peak_check(impl, [
        ("QLoRA, bf16, one batch of 4", Plan(64, 4, precision="bf16", lora_rank=8, base_format="nf4_dq"), TINY),
        ("QLoRA, fp32, 2 x 2, every layer checkpointed",
         Plan(32, 2, 2, lora_rank=4, base_format="nf4_dq", checkpointed_layers=3), OTHER),
    ])


@CHECKS.add("7.1", "several devices and ZeRO stages",
            hint="pass devices and sharding_stage; batch_size stays per device")
def several_devices_and_zero_stages(impl):
    return _peak_check(impl, [
        (f"full fp32, 2 devices, ZeRO-{stage}", Plan(64, 2, 2, devices=2, sharding_stage=stage), TINY)
        for stage in (0, 2, 3)] + [
        ("LoRA bf16, 4 devices, ZeRO-1, 2 x 2", Plan(32, 2, 2, precision="bf16", lora_rank=4, devices=4,
                                                     sharding_stage=1), OTHER)])


# ------------------------------------------------------------------------- Exercise 7.2: choose --
def _call_choose(impl, case):
    model, budget, devices, batch, seq, space, costs = case
    return impl.choose_plan(model, budget, devices, batch, seq_len=seq, space=space, costs=costs)


def _plans(case):
    model, _, devices, batch, seq, space, _ = case
    return space.plans(model, devices=devices, effective_batch=batch, seq_len=seq)


def _fastest(case) -> tuple[float, list[Plan]]:
    """The least predicted time among the plans that fit, and the fitting plans."""
    model, budget, *_, costs = case
    fitting = [p for p in _plans(case) if _peak(p, model) <= budget]
    return min(step_time(p, model, costs) for p in fitting), fitting


def _budget_at(model, devices, batch, seq, space, costs, which: float) -> float:
    """A budget `which` of the way from the smallest to the fastest plan's peak (log scale; above 1: more)."""
    plans = space.plans(model, devices=devices, effective_batch=batch, seq_len=seq)
    fastest = min(plans, key=lambda p: (step_time(p, model, costs), _peak(p, model)))
    low, high = min(_peak(p, model) for p in plans), _peak(fastest, model)
    return low * (high / low) ** which


@functools.cache
def _cases():
    """(model, budget, devices, effective_batch, seq_len, space, costs): generous, medium and tight budgets."""
    cases = []
    for which in (1.05, 0.6, 0.3, 0.1):
        cases.append((TINY, _budget_at(TINY, 1, 8, 64, SMALL, None, which), 1, 8, 64, SMALL, None))
    for which in (0.7, 0.3):
        cases.append((OTHER, _budget_at(OTHER, 2, 8, 32, TWO_DEVICES, None, which), 2, 8, 32, TWO_DEVICES, None))
    cases.append((TINY, _budget_at(TINY, 1, 8, 64, FULL_ONLY, None, 0.5), 1, 8, 64, FULL_ONLY, None))
    return cases


def _describe(case) -> str:
    model, budget, devices, batch, seq, space, costs = case
    name = "tiny" if model == TINY else "3-layer"
    extra = ", CPU-like costs" if costs is not None else ""
    return f"{name} model, {budget / 2**20:.3f} MiB, {devices} device(s), batch {batch} x {seq}{extra}"


FIX_PEAK_FIRST = "your peak_bytes (Exercise 7.1) disagrees with the estimator: fix it first (its checks name the mistake)"


def _own_peak(impl, plan: Plan, model):
    """The learner's peak_bytes for this plan, or None when it fails."""
    try:
        return impl.peak_bytes(plan, model)
    except Exception:  # noqa: BLE001 - only a diagnosis
        return None


def _checked_plan(impl, case):
    """(the learner's plan, None) or (None, a failure) when the answer is not a plan of the space."""
    model, budget, devices = case[:3]
    try:
        plan = _call_choose(impl, case)
    except ValueError as error:
        fitting = [p for p in _plans(case) if _peak(p, model) <= budget]
        wrong = [p for p in fitting if (_own_peak(impl, p, model) or 0) > budget]
        return None, failed(f"{_describe(case)}: raised ValueError({str(error)[:100]!r}) although {len(fitting)} "
                            "plans fit", FIX_PEAK_FIRST if wrong else
                            "raise 'nothing fits' only when no plan's peak is <= the budget")
    if plan is None:
        return None, failed(f"{_describe(case)}: returned None", "return a plan of the space (raise when none fits)")
    if plan not in _plans(case):
        hint = ("devices ignored: plan for every device (space.plans(..., devices=devices, ...))"
                if getattr(plan, "devices", devices) != devices else
                "pick from space.plans(model_config, devices=..., effective_batch=..., seq_len=...)")
        return None, failed(f"{_describe(case)}: returned {plan!r:.160}, not a plan of the space", hint)
    return plan, None


def _too_big_hint(impl, plan: Plan, model, budget: float) -> str:
    own = _own_peak(impl, plan, model)
    if own == _estimate(plan, model).peak_bytes:
        return ("compared the accounting peak (held tensors) with the budget: the device also holds the temporaries, "
                "use the allocator peak (your peak_bytes)")
    if own is not None and own <= budget:
        return FIX_PEAK_FIRST
    return "the budget was ignored: choose among the plans whose peak fits it"


@CHECKS.add("7.2", "the plan fits the budget",
            hint="keep the plans whose peak_bytes is at most the budget, then choose among them")
def the_plan_fits_the_budget(impl):
    for case in _cases():
        plan, problem = _checked_plan(impl, case)
        if problem:
            return problem
        model, budget = case[0], case[1]
        peak = _peak(plan, model)
        if peak > budget:
            return failed(f"{_describe(case)}: the plan needs {peak:,} bytes > budget {budget:,.0f}",
                          _too_big_hint(impl, plan, model, budget))
    return passed(f"{len(_cases())} budgets (generous to tight, 1 and 2 devices): every plan fits")


def _slower_hint(impl, plan, case, fitting) -> str:
    model, budget, devices, batch, seq, space, costs = case
    best = min(fitting, key=lambda p: step_time(p, model, costs))
    if (_own_peak(impl, best, model) or 0) > budget:
        return FIX_PEAK_FIRST + f" (it says the fastest plan that fits, {best.describe(model.n_layers)}, does not)"
    smallest = min(fitting, key=lambda p: _peak(p, model))
    if _peak(plan, model) == _peak(smallest, model):
        return ("picked the smallest plan that fits, not the fastest: every technique on costs time; turn on only "
                "what the budget needs (the least step_time among the plans that fit)")
    ladder = seed_ladder(model, budget, devices, batch, seq_len=seq)
    if ladder[-1][0] == plan:
        return ("the seed's ladder (mixed precision, then checkpointing, accumulation, LoRA): the first rung that "
                "fits is not the fastest plan that fits; compare every plan")
    if costs is not None and step_time(plan, model) <= min(step_time(p, model) for p in fitting) + TIME_TOLERANCE:
        return "costs ignored: pass costs to step_time(plan, model_config, costs)"
    return "among the plans that fit, return the one with the least step_time(plan, model_config, costs)"


@CHECKS.add("7.2", "the plan is the fastest that fits",
            hint="min(fitting, key=lambda plan: step_time(plan, model_config, costs))")
def the_plan_is_the_fastest_that_fits(impl):
    cases = _cases() + [(TINY, _budget_at(TINY, 1, 8, 64, SMALL, CPU_LIKE, 0.6), 1, 8, 64, SMALL, CPU_LIKE)]
    for case in cases:
        plan, problem = _checked_plan(impl, case)
        if problem:
            return problem
        best, fitting = _fastest(case)
        if plan not in fitting:
            continue  # "the plan fits the budget" reports it
        got = step_time(plan, case[0], case[-1])
        if got > best + TIME_TOLERANCE:
            return failed(f"{_describe(case)}: predicted time x{got:.3f}, the fastest plan that fits takes x{best:.3f}",
                          _slower_hint(impl, plan, case, fitting))
    return passed(f"{len(cases)} budgets: the least predicted step time of the plans that fit (brute force)")


@CHECKS.add("7.2", "a budget equal to a plan's peak fits",
            hint="a plan fits when its peak is <= the budget (not <)")
def a_budget_equal_to_a_plans_peak_fits(impl):
    for which in (1.0, 0.5):
        budget = _budget_at(TINY, 1, 8, 64, SMALL, None, which)
        fitting = [p for p in SMALL.plans(TINY, effective_batch=8, seq_len=64) if _peak(p, TINY) <= budget]
        best = min(fitting, key=lambda p: (step_time(p, TINY), _peak(p, TINY)))
        exact = float(_peak(best, TINY))
        case = (TINY, exact, 1, 8, 64, SMALL, None)
        plan, problem = _checked_plan(impl, case)
        if problem:
            return problem
        if step_time(plan, TINY) > step_time(best, TINY) + TIME_TOLERANCE:
            below = min(step_time(p, TINY) for p in fitting if _peak(p, TINY) < exact)
            hint = ("a plan whose peak equals the budget fits: compare with <=, not <"
                    if abs(step_time(plan, TINY) - below) <= TIME_TOLERANCE else
                    _slower_hint(impl, plan, case, [p for p in fitting if _peak(p, TINY) <= exact]))
            return failed(f"budget exactly {exact:,.0f} bytes (the peak of {best.describe(4)}): a slower plan was "
                          "chosen", hint)
    return passed("budgets exactly at the best plan's peak: that plan is chosen")


@CHECKS.add("7.2", "several devices: the plan keeps them and the effective batch",
            hint="ask the space for plans with devices=devices and effective_batch=effective_batch")
def several_devices_the_plan_keeps_them_and_the_effective_batch(impl):
    case = (OTHER, _budget_at(OTHER, 2, 8, 32, TWO_DEVICES, None, 0.5), 2, 8, 32, TWO_DEVICES, None)
    plan = _call_choose(impl, case)
    if getattr(plan, "devices", None) != 2 or getattr(plan, "effective_batch", None) != 8:
        return failed(f"asked for 2 devices and an effective batch of 8, got a plan for "
                      f"{getattr(plan, 'devices', '?')} device(s) and {getattr(plan, 'effective_batch', '?')} sequences",
                      "devices ignored: plan for every device (space.plans(..., devices=devices, ...)); each device "
                      "runs effective_batch / devices sequences")
    return passed(f"2 devices, effective batch 8: {plan.describe(3)}")


_NUMBER = re.compile(r"([0-9][0-9,_]*(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)\s*(bytes|byte|b|kb|mb|gb|kib|mib|gib)?\b",
                     re.IGNORECASE)
_SCALE = {None: 1, "bytes": 1, "byte": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


def _mentions(message: str, nbytes: int) -> bool:
    """Does the message state `nbytes` within 1% (in bytes, or in KB/MB/GB/KiB/MiB/GiB)?"""
    for number, unit in _NUMBER.findall(message):
        value = float(number.replace(",", "").replace("_", "")) * _SCALE[unit.lower() if unit else None]
        if abs(value - nbytes) <= MESSAGE_TOLERANCE * nbytes:
            return True
    return False


@CHECKS.add("7.2", "nothing fits: a clear error with the smallest need",
            hint="raise ValueError('nothing fits ...: the smallest plan needs N bytes') when no plan fits")
def nothing_fits_a_clear_error_with_the_smallest_need(impl):
    for model, devices, batch, seq, space in ((TINY, 1, 8, 64, SMALL), (OTHER, 2, 8, 32, TWO_DEVICES)):
        smallest = min(_peak(p, model) for p in space.plans(model, devices=devices, effective_batch=batch, seq_len=seq))
        case = (model, smallest * 0.95, devices, batch, seq, space, None)
        plans = space.plans(model, devices=devices, effective_batch=batch, seq_len=seq)
        try:
            got = _call_choose(impl, case)
        except ValueError as error:
            if not _mentions(str(error), smallest):
                own = [_own_peak(impl, p, model) for p in plans]
                hint = (FIX_PEAK_FIRST if None not in own and _mentions(str(error), min(own)) else
                        "say what the smallest plan needs (min peak_bytes over the plans), e.g. "
                        "f'the smallest plan needs {smallest:,} bytes'")
                return failed(f"{_describe(case)}: ValueError({str(error)[:120]!r}) does not say what the smallest "
                              f"plan needs ({smallest:,} bytes)", hint)
            continue
        hint = ("returned a plan (or None) when nothing fits: raise ValueError saying what the smallest plan needs"
                if not isinstance(got, Plan) else _too_big_hint(impl, got, model, case[1]))
        return failed(f"{_describe(case)}: below the smallest plan ({smallest:,} bytes), returned {got!r:.100}", hint)
    return passed("below the smallest plan: ValueError naming what it needs (1 and 2 devices)")


@CHECKS.add("7.2", "bad input gets clear errors",
            hint="raise ValueError for a budget that is not a positive number (0, negative, NaN), devices < 1 and "
                 "an effective batch the devices cannot share")
def bad_input_gets_clear_errors(impl):
    attempts = [(f"budget {budget!r}", (TINY, budget, 1, 8, 64, SMALL, None), "positive")
                for budget in (0, -2**20, float("nan"))]
    attempts += [("devices 0", (TINY, 2**30, 0, 8, 64, SMALL, None), ""),
                 ("devices -1", (TINY, 2**30, -1, 8, 64, SMALL, None), ""),
                 ("effective batch 7 on 2 devices", (TINY, 2**30, 2, 7, 64, SMALL, None), "")]
    for name, case, word in attempts:
        try:
            got = _call_choose(impl, case)
        except ValueError as error:
            if not str(error).strip():
                return failed(f"{name}: ValueError without a message", "say what was wrong and what is allowed")
            if word and word not in str(error).lower():
                return failed(f"{name}: ValueError({str(error)[:100]!r}) does not say the budget must be positive",
                              "check the budget first: a budget of 0, a negative one or NaN is bad input (say it "
                              "must be positive), not 'nothing fits'")
            continue
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - reported
            return failed(f"{name}: {type(error).__name__}: {error}", "raise ValueError with a clear message")
        return failed(f"{name}: no error, returned {got!r:.80}", "refuse it with a ValueError that says what is allowed")
    return passed(f"{len(attempts)} bad inputs refused with ValueError")


# ------------------------------------------------------------------------- Exercise 7.3: minimum --
@CHECKS.add("7.3", "the least budget is the smallest plan's peak",
            hint="min(peak_bytes(plan, model_config) for plan in space.plans(...))")
def the_least_budget_is_the_smallest_plans_peak(impl):
    cases = [(TINY, 1, 4, 8, SearchSpace()), (TINY, 1, 8, 64, SMALL), (OTHER, 2, 4, 16, TWO_DEVICES)]
    for model, devices, batch, seq, space in cases:
        got = impl.minimum_budget(model, devices, batch, seq_len=seq, space=space)
        plans = space.plans(model, devices=devices, effective_batch=batch, seq_len=seq)
        want = min(_peak(p, model) for p in plans)
        if got != want:
            everything = [p for p in plans if len(p.techniques) == max(len(q.techniques) for q in plans)
                          and p.checkpointed_layers == max(q.checkpointed_layers for q in plans)]
            if any(_peak(p, model) == got for p in everything):
                hint = ("assumed the plan with every technique on is the smallest: at short sequences a checkpoint "
                        "keeps more (its input and the RNG state) than it saves; take the minimum over the plans")
            elif got == min(_estimate(p, model).peak_bytes for p in plans):
                hint = "the accounting peak (held tensors): a budget must hold the allocator peak (your peak_bytes)"
            elif got == min(_own_peak(impl, p, model) or 0 for p in plans):
                hint = FIX_PEAK_FIRST
            else:
                hint = "the least budget is the smallest peak_bytes over every plan of the space"
            return failed(f"{'tiny' if model == TINY else '3-layer'} model, {devices} device(s), batch {batch} x {seq}: "
                          f"{got!r} bytes, the smallest plan needs {want:,}", hint)
    return passed(f"{len(cases)} cases (short and long sequences, 1 and 2 devices): the smallest plan's peak")


def prepare() -> None:
    """Estimate every plan the checks use once, before the per-check timer starts (the workers that run the
    checks are forked from here and inherit the cache)."""
    _cases()
    for model, devices, batch, seq, space in ((TINY, 1, 8, 64, SMALL), (TINY, 1, 8, 64, FULL_ONLY),
                                              (OTHER, 2, 8, 32, TWO_DEVICES), (TINY, 1, 4, 8, SearchSpace()),
                                              (OTHER, 2, 4, 16, TWO_DEVICES)):
        for plan in space.plans(model, devices=devices, effective_batch=batch, seq_len=seq):
            _peak(plan, model)


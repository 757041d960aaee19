"""The planner: its peak is the estimator's, its step time the FLOP model plus stated costs, its choice the
fastest plan that fits (the same as brute force), and bad input gets clear errors."""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import replace

import pytest

from efftrain_lib import memory_advisor
from efftrain_lib.memory import GB, estimate_training_memory
from efftrain_lib.meter import MIB
from efftrain_lib.models import TinyConfig
from efftrain_lib.planner import (NothingFits, Plan, SearchSpace, StepCosts, choose_plan, explain, format_bytes,
                                  frontier, minimum_budget, parse_budget, peak_bytes, plain_plan, seed_ladder,
                                  step_time)

TINY = TinyConfig(vocab_size=96, hidden_size=64, n_layers=4, n_heads=4, ffn_dim=172, max_seq_len=64)
OTHER = TinyConfig(vocab_size=128, hidden_size=48, n_layers=3, n_heads=3, ffn_dim=128, max_seq_len=32)


def brute_force(model, budget, devices, batch, seq, space, costs=None):
    """choose_plan's definition, spelled out: every plan, those that fit, sorted by (time, techniques, peak)."""
    plans = space.plans(model, devices=devices, effective_batch=batch, seq_len=seq)
    fitting = [p for p in plans if peak_bytes(p, model) <= budget]
    key = lambda p: (round(step_time(p, model, costs), 12), len(p.techniques), peak_bytes(p, model))  # noqa: E731
    return min(fitting, key=key) if fitting else None


# ----------------------------------------------------------------------------------------- the plan --
def test_a_plan_derives_its_batch_and_names_its_techniques():
    plan = Plan(64, 2, 4, "bf16", 8, base_format="nf4_dq", checkpointed_layers=2, devices=2, sharding_stage=2)
    assert (plan.per_device_batch, plan.effective_batch) == (8, 16)
    assert plan.finetuning == "qlora"
    assert plan.techniques == ("mixed precision", "checkpointing", "accumulation", "LoRA", "4-bit base", "sharding")
    assert plain_plan(plan) == Plan(64, 8, devices=2)
    assert plain_plan(plan).techniques == ()
    assert "checkpointing 2/4 layers" in plan.describe(4) and "ZeRO-2" in plan.describe(4)
    assert Plan(**plan.as_dict()) == plan  # JSON-able and back
    assert Plan(64, 1, lora_rank=4, lora_targets=["q_proj"]).lora_targets == ("q_proj",)  # hashable


@pytest.mark.parametrize("kwargs, words", [
    (dict(micro_batch_size=0), "micro_batch_size must be a positive integer"),
    (dict(precision="fp16"), "precision must be one of"),
    (dict(base_format="nf4_dq"), "needs LoRA"),
    (dict(lora_rank=8, base_format="int4"), "base_format must be"),
    (dict(checkpointed_layers=-1), "checkpointed_layers must be an integer >= 0"),
    (dict(sharding_stage=2), "one device has nothing to shard"),
    (dict(devices=0), "devices must be an integer >= 1"),
    (dict(devices=2, sharding_stage=4), "sharding_stage must be one of"),
])
def test_a_bad_plan_says_what_is_wrong(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Plan(**{"seq_len": 64, "micro_batch_size": 2, **kwargs})


# ------------------------------------------------------------------------------------- predictions --
@pytest.mark.parametrize("plan, model", [
    (Plan(64, 2, 4, "bf16", 8, checkpointed_layers=2), TINY),
    (Plan(32, 1, 4, "fp32", 4, base_format="nf4_dq", checkpointed_layers=3, devices=4, sharding_stage=3), OTHER),
    (Plan(2048, 1, 16, "bf16_autocast", checkpointed_layers=32, devices=8, sharding_stage=2), "Llama-2-7B"),
])
def test_the_peak_is_the_estimators_allocator_peak(plan, model):
    direct = estimate_training_memory(model, batch_size=plan.per_device_batch, micro_batch_size=plan.micro_batch_size,
                                      seq_len=plan.seq_len, precision=plan.precision, optimizer=plan.optimizer,
                                      lora_rank=plan.lora_rank, lora_targets=plan.lora_targets,
                                      base_format=plan.base_format, checkpointing=plan.checkpointed_layers,
                                      devices=plan.devices, sharding_stage=plan.sharding_stage)
    assert peak_bytes(plan, model) == direct.allocator_peak  # one source of truth: no second formula


def test_step_time_is_the_flop_model_plus_the_stated_costs():
    base = Plan(64, 8)
    assert step_time(base, TINY) == 1.0
    assert step_time(replace(base, checkpointed_layers=4), TINY) == pytest.approx(8 / 6)  # one more forward
    assert step_time(replace(base, checkpointed_layers=2), TINY) == pytest.approx(7 / 6)  # half of one
    assert step_time(replace(base, lora_rank=8), TINY) == pytest.approx(4 / 6)  # no frozen-weight gradients
    assert step_time(replace(base, precision="bf16_autocast"), TINY) == pytest.approx(0.5)
    assert step_time(replace(base, lora_rank=8, base_format="nf4_dq"), TINY) == pytest.approx(4 / 6 + 0.08)
    qlora_4 = replace(base, lora_rank=8, base_format="nf4_dq", micro_batch_size=2, accumulation_steps=4)
    assert step_time(qlora_4, TINY) == pytest.approx(4 / 6 + 3 * 0.03 + 4 * 0.08)  # both per micro-batch
    assert step_time(replace(base, micro_batch_size=2, accumulation_steps=4), TINY) == pytest.approx(1 + 3 * 0.03)
    two = Plan(64, 4, devices=2)
    assert step_time(replace(two, sharding_stage=2), TINY) == step_time(two, TINY) == 1.0  # 2 Psi, as DDP
    assert step_time(replace(two, sharding_stage=3), TINY) == pytest.approx(1 + 0.1 * 0.5)  # 3 Psi
    cpu = StepCosts(mixed_precision_speedup=0.5, micro_batch_overhead=0.2)
    assert step_time(replace(base, precision="bf16_autocast"), TINY, cpu) == pytest.approx(2.0)
    # the advisor's time_factor, extended to a fraction of the layers, still takes its booleans
    assert memory_advisor.time_factor(0.5, False, False) == pytest.approx(7 / 6)
    with pytest.raises(ValueError, match="fraction"):
        memory_advisor.time_factor(1.5, False, False)
    with pytest.raises(ValueError, match="exceeds the model's 4 layers"):
        step_time(replace(base, checkpointed_layers=5), TINY)


@pytest.mark.parametrize("kwargs", [dict(mixed_precision_speedup=0), dict(dequantize_overhead=-0.1),
                                    dict(micro_batch_overhead=float("nan")), dict(communication_share=True)])
def test_bad_costs_are_refused(kwargs):
    with pytest.raises(ValueError):
        StepCosts(**kwargs)


# ---------------------------------------------------------------------------------------- choosing --
CASES = [(TINY, 1, 8, 64, SearchSpace()), (TINY, 1, 4, 16, SearchSpace(finetuning=("full",))),
         (OTHER, 2, 8, 32, SearchSpace(checkpointing=(0, 0.5, 1))), (OTHER, 4, 8, 32, SearchSpace(lora_rank=4))]


@pytest.mark.parametrize("model, devices, batch, seq, space", CASES)
def test_choose_plan_is_brute_force_at_every_budget(model, devices, batch, seq, space):
    # The search stops at the first group of plans (in time order) with one that fits; brute force looks at all.
    plans = space.plans(model, devices=devices, effective_batch=batch, seq_len=seq)
    peaks = sorted({peak_bytes(p, model) for p in plans})
    rng = random.Random(0)
    budgets = peaks[:: max(1, len(peaks) // 8)] + [rng.uniform(peaks[0], peaks[-1] * 1.2) for _ in range(8)]
    for costs in (None, StepCosts(mixed_precision_speedup=0.7, micro_batch_overhead=0.2)):
        for budget in budgets:
            chosen = choose_plan(model, budget, devices, batch, seq_len=seq, space=space, costs=costs)
            assert chosen == brute_force(model, budget, devices, batch, seq, space, costs), budget
            assert peak_bytes(chosen, model) <= budget
            assert (chosen.devices, chosen.effective_batch, chosen.seq_len) == (devices, batch, seq)


@pytest.mark.parametrize("model, devices, batch, seq, space", CASES[:3])
def test_the_frontier_is_every_budgets_choice(model, devices, batch, seq, space):
    points = frontier(model, devices, batch, seq_len=seq, space=space)
    assert [p.peak for p in points] == sorted((p.peak for p in points), reverse=True)  # less memory, ...
    assert [p.time for p in points] == sorted(p.time for p in points)  # ... more time
    for point in points:
        assert choose_plan(model, point.peak, devices, batch, seq_len=seq, space=space) == point.plan
    assert points[-1].peak == minimum_budget(model, devices, batch, seq_len=seq, space=space)


def test_a_budget_below_the_smallest_plan_says_what_the_smallest_needs():
    smallest = minimum_budget(TINY, 1, 8, seq_len=64)
    with pytest.raises(NothingFits, match=r"nothing fits in 0\.\d+ MiB per device: the smallest plan needs") as caught:
        choose_plan(TINY, smallest - 1, 1, 8, seq_len=64)
    error = caught.value
    assert isinstance(error, ValueError) and error.needed == smallest and peak_bytes(error.smallest, TINY) == smallest
    assert f"{smallest:,} bytes" in str(error)
    again = pickle.loads(pickle.dumps(error))  # a rank's error crosses processes
    assert (str(again), again.needed, again.smallest) == (str(error), error.needed, error.smallest)
    assert choose_plan(TINY, smallest, 1, 8, seq_len=64) == error.smallest  # exactly the need fits


def test_at_short_sequences_checkpointing_everything_is_not_the_smallest_plan():
    # A checkpoint keeps its input and the RNG state: at 8 tokens that is more than the layer's activations.
    plans = SearchSpace().plans(TINY, effective_batch=4, seq_len=8)
    smallest = min(plans, key=lambda p: peak_bytes(p, TINY))
    assert smallest.checkpointed_layers < TINY.n_layers
    assert minimum_budget(TINY, 1, 4, seq_len=8) < min(peak_bytes(p, TINY) for p in plans
                                                        if p.checkpointed_layers == TINY.n_layers)


@pytest.mark.parametrize("call, words", [
    (lambda: choose_plan(TINY, 0), "budget_bytes must be a positive"),
    (lambda: choose_plan(TINY, -1e9), "budget_bytes must be a positive"),
    (lambda: choose_plan(TINY, float("nan")), "budget_bytes must be a positive"),
    (lambda: choose_plan(TINY, True), "budget_bytes must be a positive"),
    (lambda: choose_plan(TINY, 1e9, devices=0), "devices must be a positive integer"),
    (lambda: choose_plan(TINY, 1e9, devices=2, effective_batch=7), "must be a multiple of devices"),
    (lambda: choose_plan("Llama-7B", 1e9), "unknown model preset 'Llama-7B'"),
    (lambda: choose_plan(TINY, 1e9, seq_len=0), "seq_len must be a positive integer"),
    (lambda: SearchSpace(finetuning=("partial",)), "finetuning must be a non-empty choice"),
    (lambda: SearchSpace(checkpointing=(1.5,)), "fractions of the layers"),
    (lambda: SearchSpace(micro_batch_sizes=(3,)).plans(TINY, effective_batch=8), "divides the per-device batch"),
    (lambda: SearchSpace(sharding_stages=(5,)), "sharding_stages must be"),
])
def test_bad_input_gets_clear_errors(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_seven_b_on_one_24_gb_gpu():
    # The interview's question. Full fine-tuning cannot fit (16 bytes/param is 108 GB of model states alone).
    plan = choose_plan("Llama-2-7B", 24 * GB, 1, 16, seq_len=2048)
    assert peak_bytes(plan, "Llama-2-7B") <= 24 * GB
    assert {"LoRA", "mixed precision"} <= set(plan.techniques)
    with pytest.raises(NothingFits, match="the smallest plan needs"):
        choose_plan("Llama-2-7B", 24 * GB, 1, 16, seq_len=2048, space=SearchSpace(finetuning=("full",)))
    eight = choose_plan("Llama-2-7B", 24 * GB, 8, 16, seq_len=2048, space=SearchSpace(finetuning=("full",)))
    assert eight.sharding_stage == 3 and peak_bytes(eight, "Llama-2-7B") <= 24 * GB


# ------------------------------------------------------------------------ the seed, and the table --
def test_the_seeds_ladder_climbs_in_its_order_and_stops_at_the_first_rung_that_fits():
    budget = 2 * MIB
    rungs = seed_ladder(TINY, budget, 1, 8, seq_len=64)
    techniques = [set(plan.techniques) for plan, *_ in rungs]
    assert techniques[0] == set() and techniques[1] == {"mixed precision"}
    assert all(a <= b for a, b in zip(techniques, techniques[1:]))  # each rung adds to the last
    assert [fits for *_, fits in rungs] == [False] * (len(rungs) - 1) + [True]
    plan, peak, time, _ = rungs[-1]
    best = choose_plan(TINY, budget, 1, 8, seq_len=64)
    assert peak <= budget and step_time(best, TINY) <= time  # the planner is never slower than the ladder


def test_explain_says_why_each_technique_is_on():
    budget = 1.45 * MIB
    plan = choose_plan(TINY, budget, 1, 8, seq_len=64)
    rows = {label: (peak, time, fits, why) for label, _, peak, time, fits, why in explain(plan, TINY, budget).rows}
    for technique in plan.techniques:
        peak, time, fits, why = rows[f"without {technique}"]
        assert (not fits and why.startswith("needed")) or (fits and "slower" in why or "kept" in why)
    assert not rows["plain step (nothing on)"][2] and rows["plain step (nothing on)"][1] == 1.0
    assert "just checkpointing (every layer)" in rows
    text = explain(plan, TINY, budget).to_text()
    assert text.splitlines()[1].startswith("budget") and "1.450 MiB" in text
    assert explain(plan, TINY, budget).to_markdown().count("\n") == len(rows) + 1


# ----------------------------------------------------------------------------------- bytes in, out --
@pytest.mark.parametrize("text, expected", [("24GB", 24e9), ("24 GiB", 24 * 2**30), ("1.45MiB", 1.45 * 2**20),
                                            ("3e9B", 3e9), ("512kib", 512 * 1024)])
def test_budgets_are_read_with_their_unit(text, expected):
    assert parse_budget(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, words", [("24", "no unit: say 24GB"), ("-3GB", "must be positive"),
                                         ("0GB", "must be positive"), ("24XB", "unknown unit 'XB'"),
                                         ("lots", "cannot read the budget")])
def test_a_bad_budget_says_what_is_allowed(text, words):
    with pytest.raises(ValueError, match=words):
        parse_budget(text)


def test_bytes_are_printed_in_the_units_devices_speak():
    assert format_bytes(24e9) == "24.00 GB"
    assert format_bytes(1.5 * MIB) == "1.500 MiB"
    assert math.isclose(parse_budget(format_bytes(24e9).replace(" ", "")), 24e9)

"""The memory estimator (efftrain_lib/memory.py): validated against the meter, and its arithmetic.

Tolerances, stated:
  * peak vs MemoryMeter's CPU accounting, every configuration of memory_validation.validation_grid():
    |error| <= 10% (the issue's bar); the median must be <= 1% (in fact the estimate is byte-exact
    today: it replays the same autograd saving rules the meter observes), and each category at the
    peak within 10% of the measured peak.
  * the allocator's peak (accounting plus what lives only while an op runs, the optimizer step's
    temporaries and the batch) vs the CPU allocator's own peak (torch.profiler), every configuration of
    the grid: within 5% above 8 MiB (the issue's target) and within 2% everywhere (what it achieves:
    the worst is -1.4%, small per-op temporaries of a recomputed layer's RMSNorms that it does not model).
  * the optimizer step's temporaries: exact (torch.profiler), per optimizer and implementation.
  * parameter counts: exact (the tiny model, LoRA, published LLaMA counts).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from efftrain_lib import memory_advisor, memory_explorer
from efftrain_lib.lora import apply_lora, count_parameters
from efftrain_lib.memory import (
    GB,
    PRESETS,
    TransformerShape,
    accelerate_estimate,
    bytes_per_parameter,
    estimate_training_memory,
    shape_of,
)
from efftrain_lib.memory_validation import (
    describe_settings,
    measure_allocator_peak,
    measure_training_memory,
    relative_error,
    validation_grid,
)
from efftrain_lib.meter import CATEGORIES, MemoryBreakdown
from efftrain_lib.models import TinyConfig, TinyTransformer

TOLERANCE = 0.10
GRID = validation_grid()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and quieter on a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grid_results(one_thread):
    rows = []
    for config, settings in GRID:
        measured = measure_training_memory(config, **settings)
        estimate = estimate_training_memory(config, **settings)
        rows.append((describe_settings(settings), estimate, measured))
    return rows


def test_grid_covers_what_the_issue_asks():
    settings = [s for _, s in GRID]
    assert {s["precision"] for s in settings} >= {"fp32", "bf16_autocast"}
    assert {s["optimizer"] for s in settings} >= {"adam", "sgd", "sgd_momentum"}
    assert any(s.get("lora_rank") for s in settings) and any(not s.get("lora_rank") for s in settings)
    assert any(s.get("checkpointing") for s in settings) and any(not s.get("checkpointing") for s in settings)
    assert any(s.get("micro_batch_size") for s in settings)
    assert len({(s["batch_size"], s["seq_len"]) for s in settings}) >= 5
    assert len(GRID) >= 30


def test_estimate_within_tolerance_of_the_meter_on_every_configuration(grid_results):
    errors = []
    for label, estimate, measured in grid_results:
        assert measured.source.startswith("CPU accounting")
        err = relative_error(estimate.peak_bytes, measured.total)
        errors.append(abs(err))
        assert abs(err) <= TOLERANCE, f"{label}: predicted {estimate.peak_bytes} vs measured {measured.total} ({err:+.1%})"
    assert statistics.median(errors) <= 0.01, errors


def test_categories_at_the_peak_match_too(grid_results):
    for label, estimate, measured in grid_results:
        predicted = estimate.as_breakdown()
        for category in CATEGORIES:
            diff = abs(getattr(predicted, category) - getattr(measured, category))
            assert diff <= TOLERANCE * measured.total, f"{label}: {category} off by {diff} bytes"


def test_random_configurations_off_the_grid():
    # Seeded draws of shapes and settings the grid does not list (seq_len 1, one layer, partial
    # checkpoint lists, LoRA on lm_head, pure bf16 with accumulation...): the same 10% bar.
    import random

    rng = random.Random(7)
    for _ in range(10):
        heads = rng.choice([1, 2, 4])
        config = TinyConfig(vocab_size=rng.choice([50, 130]), hidden_size=heads * rng.choice([8, 16]),
                            n_layers=rng.randint(1, 3), n_heads=heads, ffn_dim=rng.choice([20, 100]), max_seq_len=32)
        batch = rng.choice([1, 2, 4])
        settings = dict(batch_size=batch, seq_len=rng.choice([1, 5, 32]),
                        precision=rng.choice(["fp32", "bf16_autocast", "bf16"]),
                        optimizer=rng.choice(["adam", "adamw", "sgd", "sgd_momentum"]),
                        micro_batch_size=rng.choice([None, 1]), lora_rank=rng.choice([None, 1, 2]),
                        lora_targets=rng.choice([("q_proj", "v_proj"), "all-linear", ("o_proj", "up_proj", "lm_head")]),
                        checkpointing=rng.choice([False, True, 1, [config.n_layers - 1]]))
        measured = measure_training_memory(config, **settings)
        predicted = estimate_training_memory(config, **settings)
        err = relative_error(predicted.peak_bytes, measured.total)
        assert abs(err) <= TOLERANCE, (config, settings, err)


@pytest.fixture(scope="module")
def allocator_results(one_thread):
    return [(describe_settings(settings), estimate_training_memory(config, **settings).allocator_peak,
             measure_allocator_peak(config, **settings)) for config, settings in GRID]


def test_allocator_peak_within_5_percent_above_8_mib_and_2_percent_everywhere(allocator_results):
    big = [(label, relative_error(predicted, measured)) for label, predicted, measured in allocator_results
           if measured > 8 * 2**20]
    assert len(big) >= 8, "the grid must hold configurations above 8 MiB"
    assert all(abs(err) <= 0.05 for _, err in big), big
    errors = {label: relative_error(predicted, measured) for label, predicted, measured in allocator_results}
    assert max(abs(e) for e in errors.values()) <= 0.02, errors


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "sgd_momentum"])
@pytest.mark.parametrize("impl", ["foreach", "for-loop", "fused"])
def test_optimizer_step_temporaries_are_what_torch_allocates(optimizer, impl):
    from efftrain_lib.optimizer_math import optimizer_step_temporaries
    from efftrain_lib.meter import profiler_peak_bytes

    shapes = [(300, 100), (1000, 100), (100,)]  # the largest tensor is not the first
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    for param in params:
        param.grad = torch.randn_like(param)
    kw = {"foreach": dict(foreach=True), "for-loop": dict(foreach=False), "fused": dict(fused=True)}[impl]
    opt = (torch.optim.Adam(params, lr=1e-3, **kw) if optimizer == "adam" else torch.optim.AdamW(params, lr=1e-3, **kw)
           if optimizer == "adamw" else torch.optim.SGD(params, lr=1e-3, momentum=0.9 * (optimizer != "sgd"), **kw))
    opt.step()  # the state exists from here on
    measured = profiler_peak_bytes(opt.step).peak_bytes
    predicted = optimizer_step_temporaries(optimizer, impl, [p.numel() for p in params], 4)
    assert predicted <= measured <= predicted + 16, (measured, predicted)  # + a few step scalars


def test_the_optimizer_step_can_be_the_peak():
    # fp32 Adam on a 7B: foreach's sqrt(v) for every parameter at once (+4 bytes/param) puts the peak in the
    # step (~135 GB), above the end of backward (~108 GB); fused=True keeps it at the end of backward.
    kw = dict(batch_size=1, seq_len=2048)
    peaks = {impl: estimate_training_memory("Llama-2-7B", optimizer_impl=impl, **kw) for impl in ("foreach", "for-loop",
                                                                                               "fused")}
    p = PRESETS["Llama-2-7B"].num_parameters()
    assert peaks["foreach"].allocator_phase == "optimizer step"
    assert peaks["foreach"].allocator_peak - peaks["fused"].allocator_peak == pytest.approx(4 * p, rel=0.01)
    assert 130 * GB < peaks["foreach"].allocator_peak < 140 * GB
    assert peaks["fused"].allocator_phase.startswith("backward")
    assert len({e.peak_bytes for e in peaks.values()}) == 1  # accounting does not see the step's temporaries
    clipped = estimate_training_memory("Llama-2-7B", clip_grad=True, optimizer_impl="fused", **kw)
    assert clipped.allocator_peak >= peaks["fused"].allocator_peak
    with pytest.raises(ValueError, match="optimizer_impl"):
        estimate_training_memory("Llama-2-7B", optimizer_impl="fast", **kw)


# ------------------------------------------------------------------------------ parameter counts --
@pytest.mark.parametrize("lora", [None, ("q_proj", "v_proj"), "all-linear"])
def test_parameter_counts_equal_the_model(lora):
    config = TinyConfig(vocab_size=96, hidden_size=64, n_layers=3, n_heads=4, ffn_dim=172, max_seq_len=64)
    model = TinyTransformer(config)
    kwargs = {}
    if lora is not None:
        apply_lora(model, list(lora) if isinstance(lora, tuple) else lora, 4, 8.0)
        kwargs = dict(lora_rank=4, lora_targets=lora)
    trainable, total = count_parameters(model)
    est = estimate_training_memory(config, batch_size=1, seq_len=8, **kwargs)
    assert (est.trainable_params, est.total_params) == (trainable, total)
    # A model that carries LoRA layers already tells the estimator its rank and targets.
    assert estimate_training_memory(model, batch_size=1, seq_len=8).as_dict() == est.as_dict()


def test_preset_parameter_counts_match_the_published_models():
    published = {"Llama-2-7B": 6_738_415_616, "Llama-2-13B": 13_015_864_320, "Llama-2-70B": 68_976_648_192,
                 "Llama-3-8B": 8_030_261_248, "TinyLlama-1.1B": 1_100_048_384, "SmolLM2-360M": 361_821_120}
    for name, count in published.items():
        assert PRESETS[name].num_parameters() == count, name
    assert 124e6 < PRESETS["125M (GPT-3 Small shape)"].num_parameters() < 126e6
    sizes = [s.num_parameters() for s in PRESETS.values()]
    assert min(sizes) < 130e6 and max(sizes) > 68e9


def test_shape_from_a_hugging_face_config():
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         intermediate_size=11008, max_position_embeddings=4096)
    shape = shape_of(config)
    assert shape.num_parameters() == PRESETS["Llama-2-7B"].num_parameters()


# ---------------------------------------------------------------------------- the 7B arithmetic --
def test_bytes_per_parameter_figures():
    assert bytes_per_parameter("fp32", "adam")["total"] == 16  # the seed's 28 + 28 + 56 GB for 7B
    assert bytes_per_parameter("bf16_autocast", "adam")["total"] == 18  # Hugging Face's figure
    fp16 = bytes_per_parameter("fp16_master", "adam")
    assert fp16["total"] == 16 and fp16["optimizer_state"] == 12  # EleutherAI: 2 + 2 + 12
    assert bytes_per_parameter("fp32", "sgd_momentum")["optimizer_state"] == 4
    assert bytes_per_parameter("fp32", "sgd")["total"] == 8


def test_seed_7b_analysis():
    shape = TransformerShape(32000, 4096, 32, 32, 11008, 2048, name="7B")
    est = estimate_training_memory(shape, batch_size=1, seq_len=2048, precision="fp32", optimizer="adam")
    p = shape.num_parameters()
    assert est.all_at_once["weights"] == 4 * p and est.all_at_once["gradients"] == 4 * p
    assert est.all_at_once["optimizer_state"] == 8 * p + 4 * (32 * 9 + 3)  # m, v + a step scalar per tensor
    # The seed: "activations usually 10-50 GB" (fp32, b=1, s=2048): ours is inside that range.
    assert 10 * GB < est.all_at_once["activations"] < 50 * GB
    # The peak is less than everything at once: gradients arrive while activations are released.
    assert est.peak_bytes < sum(est.all_at_once.values())


def test_eager_attention_keeps_the_seq_by_seq_probabilities():
    shape = PRESETS["Llama-2-7B"]
    kw = dict(batch_size=1, seq_len=2048, precision="bf16_autocast")
    flash = estimate_training_memory(shape, attention="flash", **kw).all_at_once["activations"]
    eager = estimate_training_memory(shape, attention="eager", **kw).all_at_once["activations"]
    per_layer = 32 * 2048 * 2048 * (4 + 2)  # fp32 softmax output + its bf16 copy, per head
    assert eager - flash == 32 * per_layer - 32 * (32 * 2048 * 4) - 0  # minus flash's logsumexp


def test_techniques_move_the_right_categories():
    kw = dict(batch_size=8, seq_len=64)
    config = TinyConfig()
    base = estimate_training_memory(config, **kw)
    ckpt = estimate_training_memory(config, checkpointing=True, **kw)
    assert ckpt.all_at_once["activations"] < base.all_at_once["activations"] / 2
    assert ckpt.all_at_once["gradients"] == base.all_at_once["gradients"]
    lora = estimate_training_memory(config, lora_rank=4, **kw)
    assert lora.all_at_once["optimizer_state"] < base.all_at_once["optimizer_state"] / 10
    accum = estimate_training_memory(config, micro_batch_size=2, **kw)
    assert accum.activations < base.activations
    assert accum.gradients == accum.all_at_once["gradients"]  # the peak is in a later micro-batch
    assert "later micro-batch" in accum.peak_phase


def test_estimate_renders():
    est = estimate_training_memory("Llama-2-7B", batch_size=1, seq_len=2048, precision="bf16_autocast",
                                   lora_rank=8, checkpointing=True)
    table = est.to_table()
    assert "GB" in table and "peak:" in table and "optimizer_state" in table and "allocator's peak" in table
    assert isinstance(est.as_breakdown(), MemoryBreakdown)
    assert est.settings["lora_targets"] == ("q_proj", "v_proj")


def test_accelerate_counts_parameters_only():
    shape = TransformerShape(1000, 64, 2, 4, 172, 128, name="small")
    fp32 = accelerate_estimate(shape, "float32")
    buffers = fp32["model"] - 4 * shape.num_parameters()
    assert 0 <= buffers <= 4 * shape.head_dim  # parameters + buffers (rotary inv_freq), fp32
    assert fp32["training"] == 4 * fp32["model"]  # "Adam ~ 4x the fp32 size": 16 bytes/param
    mixed = accelerate_estimate(shape, "bfloat16")
    assert mixed["training"] == 2 * fp32["model"]  # it prints the largest single entry: 8 bytes/param


# ------------------------------------------------------------------------------------ bad input --
@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(batch_size=4, seq_len=-1), "seq_len must be a positive integer"),
        (dict(batch_size=4, precision="fp8"), "unknown precision 'fp8'"),
        (dict(batch_size=4, optimizer="adagrad"), "unknown optimizer 'adagrad'"),
        (dict(batch_size=4, lora_rank=0), "lora_rank must be a positive integer"),
        (dict(batch_size=4, lora_rank=65), "LoRA rank 65 is larger than layer q_proj (64 x 64)"),
        (dict(batch_size=4, lora_rank=4, lora_targets=["c_attn"]), "unknown LoRA target"),
        (dict(batch_size=4, micro_batch_size=3), "must divide batch_size"),
        (dict(batch_size=4, seq_len=65), "exceeds the model's learned positions"),
        (dict(batch_size=4, checkpointing=9), "number of checkpointed layers"),
        (dict(batch_size=4, attention="paged"), "unknown attention 'paged'"),
    ],
)
def test_bad_input_says_what_is_wrong(kwargs, words):
    with pytest.raises(ValueError) as info:
        estimate_training_memory(TinyConfig(), **kwargs)
    assert words in str(info.value)


def test_bad_models():
    with pytest.raises(ValueError, match="unknown model preset 'Llama-9B'"):
        estimate_training_memory("Llama-9B", batch_size=1)
    with pytest.raises(ValueError, match="cannot read a transformer shape"):
        estimate_training_memory(torch.nn.Linear(2, 2), batch_size=1)
    with pytest.raises(ValueError, match="hidden_size"):
        TransformerShape(10, 30, 1, 4, 8, 8)
    with pytest.raises(ValueError, match="measured bytes must be positive"):
        relative_error(1, 0)
    # a calculator typo of a billion layers is refused at once, not replayed for an hour
    with pytest.raises(ValueError, match=r"n_layers must be at most 1024"):
        memory_explorer.custom_shape(n_layers=10**9)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -2.0, 0])
def test_non_finite_or_non_positive_byte_sizes_are_refused(value):
    from efftrain_lib.memory import training_memory_bytes

    with pytest.raises(ValueError, match="weight_bytes must be a finite positive number"):
        training_memory_bytes(1000, weight_bytes=value, grad_bytes=4, optimizer="adam")
    with pytest.raises(ValueError, match="grad_bytes must be a finite positive number"):
        training_memory_bytes(1000, weight_bytes=4, grad_bytes=value, optimizer="adam")


# ------------------------------------------------------------------------- advisor and calculator --


def test_time_factors_follow_the_flop_count():
    assert memory_advisor.time_factor(False, False, False) == 1.0
    assert memory_advisor.time_factor(True, False, False) == pytest.approx(8 / 6)  # one extra forward
    assert memory_advisor.time_factor(False, True, False) == pytest.approx(4 / 6)  # no frozen-weight grads
    assert memory_advisor.time_factor(True, True, True, 2.0) == pytest.approx(6 / 6 / 2)
    with pytest.raises(ValueError, match="mixed_precision_speedup"):
        memory_advisor.time_factor(False, False, True, 0)


def test_advisor_ranks_every_combination_and_agrees_with_the_estimator():
    options = memory_advisor.advise("Llama-2-7B", batch_size=8, seq_len=2048, budget_gb=80)
    assert len(options) == 16 and len({o.techniques for o in options}) == 16
    fitting = [o for o in options if o.fits]
    assert fitting and options[: len(fitting)] == fitting  # fitting options first
    assert [o.time_factor for o in fitting] == sorted(o.time_factor for o in fitting)
    for o in options:
        assert o.fits == (o.peak_bytes <= 80 * GB)
    # Full fine-tuning of a 7B with Adam never fits 80 GB (16-18 bytes/param of model states):
    assert not any(o.fits for o in options if "LoRA" not in o.techniques)
    plain = next(o for o in options if not o.techniques)
    est = estimate_training_memory("Llama-2-7B", batch_size=8, seq_len=2048)
    assert plain.peak_bytes == est.peak_bytes + est.workspace


def test_seed_order_beside_the_advisor():
    options = memory_advisor.advise("TinyLlama-1.1B", batch_size=32, seq_len=2048, budget_gb=24)
    ladder = memory_advisor.seed_order(options)
    assert [o.techniques for o, _ in ladder][:2] == [(), ("mixed precision",)]
    assert ladder[-1][1] and not any(fits for _, fits in ladder[:-1])  # stops at the first rung that fits
    text = memory_advisor.compare_with_seed(options)
    assert "Advisor's pick" in text and "Where they disagree" in text
    # batch 1 has no accumulation rung; nothing fits a 70B on one 141 GB GPU without sharding
    text = memory_explorer.advisor_table("Llama-2-70B", batch_size=1, seq_len=4096, budget_gb=141)
    assert "Nothing fits" in text
    for budget in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="budget_gb must be a finite positive number"):
            memory_advisor.advise("Llama-2-7B", batch_size=1, seq_len=16, budget_gb=budget)


def test_mixed_precision_over_fp32_frozen_weights_costs_memory_with_lora():
    # torch.autocast re-casts a frozen fp32 weight on every call and keeps the bf16 copy for backward
    # (2 bytes/param), so autocast + LoRA over fp32 weights needs more than fp32 LoRA at small batch.
    kw = dict(batch_size=1, seq_len=512, lora_rank=8)
    fp32 = estimate_training_memory("Llama-2-7B", precision="fp32", **kw)
    amp = estimate_training_memory("Llama-2-7B", precision="bf16_autocast", **kw)
    bf16 = estimate_training_memory("Llama-2-7B", precision="bf16", **kw)
    assert amp.cast_weights > 10 * GB and amp.peak_bytes > fp32.peak_bytes > bf16.peak_bytes


def test_calculator_logic():
    est = memory_explorer.calculate("Llama-2-7B", precision="bf16_autocast", lora_rank=8, checkpointing=True,
                                    batch_size=4, seq_len=2048)
    assert est.trainable_params == 4_194_304
    fits = memory_explorer.gpus_that_fit(est)
    assert fits == [name for name, gb in memory_explorer.GPU_SIZES_GB.items()
                    if est.peak_bytes + est.workspace <= gb * GB]
    assert "Predicted peak" in memory_explorer.summary(est)
    custom = memory_explorer.calculate("custom", hidden_size=512, n_layers=4, n_heads=8, ffn_dim=1376, batch_size=2,
                                       seq_len=128)
    assert custom.total_params == memory_explorer.custom_shape(512, 4, 8, 1376).num_parameters()
    with pytest.raises(ValueError, match="divisible"):
        memory_explorer.calculate("custom", hidden_size=500, n_heads=8)
    full = memory_explorer.calculate("Llama-2-7B", lora_rank=0)
    assert full.trainable_params == full.total_params


def test_calculator_draws_and_the_widget_builds():
    from efftrain_lib.lora_explorer import render_png

    est = memory_explorer.calculate("125M (GPT-3 Small shape)", batch_size=8, seq_len=1024)
    png = render_png(lambda ax: memory_explorer.draw_calculator(ax, est))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    widget = memory_explorer.memory_calculator()
    assert repr(widget).startswith("Memory calculator (controls: model, precision")
    controls = dict(precision="bf16_autocast", optimizer="adam", lora_rank=8, checkpointing=True, batch_size=2,
                    seq_len=4096)
    for preset in list(PRESETS) + ["custom"]:  # every choice of the dropdown draws a figure
        png = render_png(memory_explorer.draw_from_controls, model=preset, **controls)
        assert png[:4] == b"\x89PNG", preset
    # an impossible custom shape is explained in the picture, not raised
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    memory_explorer.draw_from_controls(ax, "custom", n_heads=7, **controls)
    assert "divisible" in ax.texts[0].get_text()

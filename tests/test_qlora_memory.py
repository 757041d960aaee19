"""The estimator, calculator and advisor with a 4-bit base and 8-bit optimizer state: byte-exact against the
meter on the tiny model, today's results unchanged by default, and the QLoRA paper's 65B on 48 GB."""

from __future__ import annotations

import pytest
import torch

from efftrain_lib import data
from efftrain_lib.lora import apply_lora
from efftrain_lib.memory import GB, PRESETS, estimate_training_memory
from efftrain_lib.memory_advisor import advise
from efftrain_lib.memory_explorer import calculate
from efftrain_lib.meter import MemoryMeter
from efftrain_lib.models import load_pretrained
from efftrain_lib.optim8bit import AdamW8bit
from efftrain_lib.qlora import apply_qlora
from efftrain_lib.qlora_explorer import LLAMA1, full_finetune_estimate, needed_gb, paper_settings, qlora_estimates
from efftrain_lib.training import trainable_parameters, training_step


def tiny_batches(batch_size=8):
    return data.batch_sampler(data.encode(data.load_text("sonnets")), batch_size, 64, seed=0)


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("autocast_dtype, precision", [(None, "fp32"), (torch.bfloat16, "bf16_autocast")])
def test_estimator_matches_the_meter_byte_for_byte_on_a_quantized_tiny_model(double_quant, autocast_dtype, precision):
    get_batch = tiny_batches()
    model = apply_qlora(load_pretrained(), 8, 16, double_quant=double_quant)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)
    training_step(model, optimizer, [get_batch(0)], autocast_dtype=autocast_dtype)  # Adam state exists
    meter = MemoryMeter()
    training_step(model, optimizer, [get_batch(1)], autocast_dtype=autocast_dtype, meter=meter)
    est = estimate_training_memory(model, batch_size=8, seq_len=64, precision=precision, optimizer="adamw",
                                   base_format="nf4_dq" if double_quant else "nf4")
    measured = meter.last.peak
    for category in ("weights", "gradients", "optimizer_state", "activations", "cast_weights"):
        assert getattr(est, category) == getattr(measured, category), category


def test_a_4bit_base_keeps_as_many_activations_as_a_frozen_fp32_base():
    get_batch = tiny_batches()
    peaks = {}
    for name, build in {"lora": lambda: apply_lora(load_pretrained(), "all-linear", 8, 16),
                        "qlora": lambda: apply_qlora(load_pretrained(), 8, 16)}.items():
        model = build()
        meter = MemoryMeter()
        training_step(model, torch.optim.AdamW(trainable_parameters(model)), [get_batch(0)], meter=meter)
        peaks[name] = meter.last.peak
    assert peaks["qlora"].activations == peaks["lora"].activations
    assert peaks["qlora"].weights < 0.6 * peaks["lora"].weights  # embeddings and lm_head stay fp32 here


def test_eight_bit_state_estimate_matches_the_meter():
    get_batch = tiny_batches()
    model = load_pretrained()
    optimizer = AdamW8bit(model.parameters(), lr=1e-3)
    training_step(model, optimizer, [get_batch(0)])
    meter = MemoryMeter()
    training_step(model, optimizer, [get_batch(1)], meter=meter)
    est = estimate_training_memory(model, batch_size=8, seq_len=64, optimizer="adamw", optimizer_state_format="8bit")
    assert est.optimizer_state == meter.last.peak.optimizer_state  # uint8 codes, fp32 absmax, fp32 small tensors
    assert est.weights == meter.last.peak.weights


@pytest.mark.parametrize("model", ["Llama-2-7B", "TinyLlama-1.1B"])
def test_defaults_keep_todays_results(model):
    kwargs = dict(batch_size=2, seq_len=512, precision="bf16", lora_rank=8, checkpointing=True)
    plain = estimate_training_memory(model, **kwargs)
    same = estimate_training_memory(model, **kwargs, base_format="same", optimizer_state_format="same")
    assert plain.as_dict() == same.as_dict() and plain.workspace == same.workspace
    assert [str(o) for o in advise(model, batch_size=4, seq_len=512, budget_gb=24)] == \
           [str(o) for o in advise(model, batch_size=4, seq_len=512, budget_gb=24, quantization=False)]


def test_formats_shrink_what_they_should_and_nothing_else():
    kwargs = dict(batch_size=1, seq_len=1024, precision="bf16", lora_rank=16, lora_targets="all-linear")
    base = estimate_training_memory("Llama-2-7B", **kwargs)
    nf4 = estimate_training_memory("Llama-2-7B", **kwargs, base_format="nf4")
    dq = estimate_training_memory("Llama-2-7B", **kwargs, base_format="nf4_dq")
    assert dq.weights < nf4.weights < base.weights
    assert (dq.activations, dq.gradients, dq.optimizer_state) == (base.activations, base.gradients, base.optimizer_state)
    # the frozen base's Linears: 16 -> 4.5 -> ~4.127 bits; embeddings and lm_head stay bf16
    linears = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert base.weights - nf4.weights == pytest.approx(linears * (16 - 4.5) / 8, rel=1e-6)
    assert nf4.weights - dq.weights == pytest.approx(linears * (0.5 - 0.127) / 8, rel=1e-3)
    state8 = estimate_training_memory("Llama-2-7B", **kwargs, optimizer_state_format="8bit")
    assert state8.optimizer_state < 0.55 * base.optimizer_state and state8.weights == base.weights


def test_bad_formats_are_refused():
    with pytest.raises(ValueError, match="needs LoRA"):
        estimate_training_memory("Llama-2-7B", batch_size=1, seq_len=128, base_format="nf4")
    with pytest.raises(ValueError, match="unknown base_format"):
        estimate_training_memory("Llama-2-7B", batch_size=1, seq_len=128, lora_rank=8, base_format="nf3")
    with pytest.raises(ValueError, match="unknown optimizer_state_format"):
        estimate_training_memory("Llama-2-7B", batch_size=1, seq_len=128, optimizer_state_format="4bit")
    with pytest.raises(ValueError, match="dequantize_overhead"):
        advise("Llama-2-7B", batch_size=1, seq_len=128, budget_gb=24, quantization=True, dequantize_overhead=-1)


def test_65b_on_48_gb_with_the_papers_settings():
    """QLoRA's headline reproduced: NF4 + double quantization fits 48 GB; a 16-bit base does not; 16-bit full
    fine-tuning needs more than 780 GB (the paper: 'from >780GB of GPU memory to <48GB')."""
    estimates = qlora_estimates("LLaMA-65B")
    assert needed_gb(estimates["NF4 + double quant"]) < 48 < needed_gb(estimates["16-bit base"])
    assert needed_gb(estimates["NF4 base"]) > needed_gb(estimates["NF4 + double quant"]) + 2.5  # ~3 GB (0.373 bit)
    assert needed_gb(full_finetune_estimate("LLaMA-65B")) > 780
    assert 65e9 < LLAMA1["LLaMA-65B"].num_parameters() < 65.5e9
    via_calculator = calculate(LLAMA1["LLaMA-65B"], **paper_settings())
    assert via_calculator.as_dict() == estimates["NF4 + double quant"].as_dict()


def test_advisor_reaches_for_a_4bit_base_only_when_16_bits_do_not_fit():
    kwargs = dict(batch_size=1, seq_len=512, lora_rank=64, lora_targets="all-linear", quantization=True)
    best_65b = next(o for o in advise(LLAMA1["LLaMA-65B"], budget_gb=48, **kwargs) if o.fits)
    assert "4-bit base" in best_65b.techniques and best_65b.base_format == "nf4_dq"
    best_7b = next(o for o in advise(PRESETS["Llama-2-7B"], budget_gb=80, **kwargs) if o.fits)
    assert "4-bit base" not in best_7b.techniques  # it fits in 16 bits: no dequantize cost to pay
    assert best_65b.peak_bytes <= 48 * GB

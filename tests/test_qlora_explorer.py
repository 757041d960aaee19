"""The QLoRA chapter's measurements and slider logic (the widgets are thin shells around these functions)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from efftrain_lib import data  # noqa: E402
from efftrain_lib import qlora_explorer as ex  # noqa: E402
from efftrain_lib.lora import apply_lora  # noqa: E402
from efftrain_lib.models import load_pretrained  # noqa: E402
from efftrain_lib.qlora import apply_qlora  # noqa: E402
from efftrain_lib.quant_math import blockwise_bytes  # noqa: E402


def samples(kind, n=64 * 256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) if kind == "normal" else torch.rand(n, generator=g) * 2 - 1


def test_errors_and_bytes_are_measured():
    x = samples("normal")
    result = ex.quantization_error(x, "nf4", 64, double_quant=True)
    assert result.errors.shape == (x.numel(),)
    assert result.nbytes == blockwise_bytes(x.numel(), 4, 64, 256)
    assert result.bits_per_parameter == pytest.approx(8 * result.nbytes / x.numel())
    assert result.max_abs <= x.abs().max().item() / 2  # never more than half the widest gap at absmax 1


def test_nf4_wins_on_normal_values_and_int4_on_uniform_ones():
    errors = ex.error_table({"normal": samples("normal"), "uniform": samples("uniform")})
    assert min(errors["normal"], key=errors["normal"].get) == "nf4"
    assert min(errors["uniform"], key=errors["uniform"].get) == "int4"


def test_smaller_blocks_give_smaller_errors():
    x = samples("normal", 64 * 1024)
    rmse = [ex.quantization_error(x, "int4", b).rmse for b in (16, 64, 256, 4096)]
    assert rmse == sorted(rmse)


def test_papers_settings_and_setups():
    settings = ex.paper_settings(seq_len=256)
    assert settings["base_format"] == "nf4_dq" and settings["lora_rank"] == 64 and settings["seq_len"] == 256
    estimates = ex.qlora_estimates("LLaMA-7B", seq_len=256)
    assert list(estimates) == list(ex.SETUPS)
    needed = [ex.needed_gb(e) for e in estimates.values()]
    assert needed == sorted(needed, reverse=True)  # each ingredient saves memory
    with pytest.raises(ValueError, match="unknown model preset"):
        ex.qlora_estimates("LLaMA-2T")


def test_drawings_produce_the_expected_artists():
    fig, ax = plt.subplots()
    ex.draw_error_histogram(ax, samples("normal"), "fp4", 64, False)
    assert len(ax.patches) == 3 and "bits/param (measured)" in ax.get_title() and "fp4" in ax.get_title()
    ax.clear()
    ex.draw_budget(ax, "LLaMA-13B", 24, 512)
    assert len(ax.patches) == len(ex.SETUPS) * 6 and "LLaMA-13B" in ax.get_title()
    plt.close(fig)


def test_widgets_build_without_a_browser():
    assert ex.error_explorer(samples("normal")) is not None
    assert ex.budget_explorer() is not None


def test_compare_finetuning_runs_every_base_through_the_one_loop():
    tokens = data.encode(data.load_text("sonnets"))
    get_batch = data.batch_sampler(tokens, 2, 16, seed=0)
    runs = ex.compare_finetuning(
        {"fp32": lambda: apply_lora(load_pretrained(), "all-linear", 4, 8), "nf4": lambda: apply_qlora(load_pretrained(), 4, 8)},
        get_batch, steps=2, make_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), val_batches=[get_batch(9)],
        timing_rounds=1, progress=False)
    assert [len(r.log.losses) for r in runs.values()] == [2, 2]
    assert runs["nf4"].peak.weights < runs["fp32"].peak.weights
    assert runs["nf4"].trainable == runs["fp32"].trainable
    assert ex.quantized_bits_per_parameter(runs["nf4"].model) == pytest.approx(4.13, abs=0.02)
    with pytest.raises(ValueError, match="no quantized layers"):
        ex.quantized_bits_per_parameter(runs["fp32"].model)
    with pytest.raises(ValueError, match="at least one builder"):
        ex.compare_finetuning({}, get_batch, steps=1, make_optimizer=None, val_batches=[])

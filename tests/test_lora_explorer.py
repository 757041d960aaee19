"""The LoRA chapter's slider logic (the widgets are thin shells around these functions)."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from efftrain_lib import lora_explorer as ex  # noqa: E402


def test_parameter_count_is_the_seed_formula():
    count = ex.lora_parameter_count(4096, 4096, 8)
    assert count["lora"] == (4096 + 4096) * 8 == 65_536
    assert count["percent"] == pytest.approx(0.390625, rel=1e-12)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        ex.lora_parameter_count(64, 64, 0)
    with pytest.raises(ValueError, match=r"larger than layer 64 x 32 allows \(at most min\(out, in\) = 32\)"):
        ex.lora_parameter_count(64, 32, 33)


def test_scaling_rules():
    assert ex.scaling(16, 8) == 2.0
    assert ex.scaling(16, 64, rslora=True) == 2.0


def test_a_rank_r_update_has_r_nonzero_singular_values():
    torch.manual_seed(0)
    delta = torch.randn(64, 4) @ torch.randn(4, 64)
    values = ex.singular_values(delta)
    assert (values[:4] > 1e-3).all() and (values[4:] < 1e-4 * values[0]).all()
    assert ex.energy_captured(values, 4) == pytest.approx(1.0, abs=1e-6)


def test_rslora_keeps_the_update_size_flat_while_alpha_over_r_shrinks_it():
    ranks = [1, 4, 16, 64, 256]
    norms = ex.update_norm_by_rank(ranks, alpha=16)
    standard, rs = norms["alpha / r"], norms["alpha / sqrt(r) (rsLoRA)"]
    # alpha/r: ~1/sqrt(r), so 256x the rank is ~16x smaller (measured 12x: at r = 256 = the layer's width,
    # A's rows fill the space and stop adding independent directions). rsLoRA: flat within a factor 1.5.
    assert 8 < standard[0] / standard[-1] < 32
    assert 1 / 1.5 < rs[0] / rs[-1] < 1.5
    # Adam's first step moves B by +-lr whatever the scaling: the two rules differ by sqrt(r) exactly
    # (up to Adam's eps = 1e-8 against gradients of ~1e-5 here: a 1e-3 relative effect).
    assert math.isclose(standard[2] * math.sqrt(16), rs[2], rel_tol=1e-2)


def test_drawings_produce_the_expected_artists():
    fig, ax = plt.subplots()
    ex.draw_rank_budget(ax, 64, 64, 8, 16)
    assert len(ax.lines) == 2 and "r=8" in ax.get_title()
    ax.clear()
    ex.draw_spectra(ax, {"LoRA": torch.ones(8), "full": torch.ones(16)}, rank=8)
    assert len(ax.lines) == 3
    ax.clear()
    ex.draw_update_norms(ax, [1, 2, 4], 16)
    assert len(ax.lines) == 2
    plt.close(fig)


def test_widgets_build_without_a_browser():
    assert ex.rank_explorer() is not None
    assert ex.scaling_explorer() is not None
    assert ex.spectrum_explorer({"layer": {"LoRA": torch.ones(8)}}, rank=8) is not None

"""The LoRA chapter's sliders: plain functions that compute what the widgets show.

The widgets are thin shells (`rank_explorer`, `spectrum_explorer`, `scaling_explorer`) around these
functions, which pytest tests; nbval never renders a widget, so the logic must live out here.
"""

from __future__ import annotations

import math

import torch

from efftrain_lib.lora import LoRALinear
from efftrain_lib.lora_math import parameter_count, scaling  # noqa: F401 (scaling: the sliders' API)
from efftrain_lib.training import training_step
from efftrain_lib.widgets import WIDE, interactive_figure, render_png, wide  # noqa: F401 (render_png: API)

# Layer shapes a learner can pick: (out_features, in_features).
LAYER_SHAPES = {
    "LLaMA-7B q_proj (4096 x 4096)": (4096, 4096),
    "LLaMA-7B up_proj (11008 x 4096)": (11008, 4096),
    "LLaMA-70B q_proj (8192 x 8192)": (8192, 8192),
    "tiny model q_proj (64 x 64)": (64, 64),
}


def lora_parameter_count(out_features: int, in_features: int, rank: int) -> dict:
    """Trainable parameters of a rank-r LoRA on one (out x in) weight, and its share of the full matrix."""
    lora = parameter_count(out_features, in_features, rank)
    full = out_features * in_features
    return {"lora": lora, "full": full, "percent": 100.0 * lora / full}


def singular_values(delta: torch.Tensor) -> torch.Tensor:
    """Singular values of a weight update, largest first (fp32)."""
    return torch.linalg.svdvals(delta.detach().float())


def energy_captured(values: torch.Tensor, k: int) -> float:
    """Share of ||delta||_F^2 held by the top-k singular values: how low-rank the update really is."""
    energy = values.pow(2)
    return (energy[:k].sum() / energy.sum()).item()


def update_norm_by_rank(ranks, alpha: float, *, features: int = 256, lr: float = 1e-3, seed: int = 0,
                        trials: int = 4) -> dict[str, list[float]]:
    """The size of LoRA's first update, ||scaling * B A x|| / ||x|| on fresh inputs x, after one Adam step
    from B = 0, by rank, under alpha / r and rsLoRA's alpha / sqrt(r). Measured, not assumed: a LoRALinear
    on a random (features x features) layer takes one step of the library's training_step on a random
    linear loss; the mean over `trials` seeds is returned.

    Why it depends on r, exactly (Kalajdzievski 2023's rank-stabilisation argument, at B = 0): Adam's first
    step moves every parameter by lr * m / sqrt(v) = lr * sign(gradient). At B = 0, A gets no gradient and
    every entry of B moves by +-lr, whatever the scaling. So B A x is a sum over r directions of A x with
    signs: its size grows like sqrt(r), and the update scaling * B A x like scaling * sqrt(r). Under
    alpha / r it shrinks like 1/sqrt(r); under alpha / sqrt(r) it stays flat.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    norms = {"alpha / r": [], "alpha / sqrt(r) (rsLoRA)": []}
    for rank in ranks:
        for label, rslora in (("alpha / r", False), ("alpha / sqrt(r) (rsLoRA)", True)):
            sizes = []
            for trial in range(trials):
                generator = torch.Generator().manual_seed(seed * 1000 + trial)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed * 1000 + trial)
                    layer = LoRALinear(torch.nn.Linear(features, features, bias=False), rank, alpha,
                                       use_rslora=rslora)
                opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
                x, g, probe = (torch.randn(32, features, generator=generator) for _ in range(3))
                training_step(layer, opt, [(x, g)], loss_fn=lambda out, target: (out * target).mean())
                with torch.no_grad():
                    sizes.append(((layer(probe) - layer.base(probe)).norm() / probe.norm()).item())
            norms[label].append(sum(sizes) / len(sizes))
    return norms


# ---- drawing (plain matplotlib, so the static notebook shows the same picture) ----

def draw_rank_budget(ax, out_features: int, in_features: int, rank: int, alpha: float) -> None:
    ranks = [r for r in (1, 2, 4, 8, 16, 32, 64, 128, 256) if r <= min(out_features, in_features)]
    ax.plot(ranks, [lora_parameter_count(out_features, in_features, r)["percent"] for r in ranks], "o-")
    count = lora_parameter_count(out_features, in_features, rank)
    ax.plot([rank], [count["percent"]], "o", color="red", markersize=10)
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="% of the layer's parameters trained",
           title=f"r={rank}: {count['lora']:,} of {count['full']:,} ({count['percent']:.3f}%), "
                 f"scaling alpha/r = {scaling(alpha, rank):.3g}")


def draw_spectra(ax, spectra: dict[str, torch.Tensor], rank: int | None = None,
                 title: str = "How low-rank is the learned update?") -> None:
    for label, values in spectra.items():
        ax.semilogy(range(1, len(values) + 1), values.clamp_min(1e-12).numpy(), ".-", label=label)
    if rank is not None:
        ax.axvline(rank, color="gray", linestyle=":", label=f"LoRA rank r={rank}")
    ax.set(xlabel="index", ylabel="singular value of the update", title=title)
    ax.legend()


def draw_update_norms(ax, ranks, alpha: float, ymax: float | None = None) -> None:
    """ymax: a fixed top for the y axis (the alpha slider passes the top at its largest alpha, so
    moving it visibly scales the curves instead of only relabelling an autoscaled axis)."""
    for label, norms in update_norm_by_rank(ranks, alpha).items():
        ax.plot(ranks, norms, "o-", label=label)
    ax.set(xscale="log", xlabel="rank r", ylabel="||scaling * B A x|| / ||x||",
           title=f"First Adam update from B = 0 vs rank, alpha={alpha:g}")
    ax.set_ylim(0, ymax)  # from zero: "how much smaller" reads off the picture
    ax.legend()


# ---- widgets (thin shells, see efftrain_lib.widgets) ----

def rank_explorer():
    """Rank and alpha -> trainable parameters and percentage for a chosen layer shape."""
    import ipywidgets as widgets

    def draw(ax, shape, rank, alpha):
        out_features, in_features = LAYER_SHAPES[shape]
        draw_rank_budget(ax, out_features, in_features, min(rank, out_features, in_features), alpha)

    return interactive_figure(draw, "Rank explorer",
                              shape=widgets.Dropdown(options=list(LAYER_SHAPES), **WIDE),
                              rank=widgets.IntSlider(value=8, min=1, max=64, **WIDE),
                              alpha=widgets.FloatSlider(value=16.0, min=1.0, max=64.0, **WIDE))


def spectrum_explorer(spectra_by_layer: dict[str, dict[str, torch.Tensor]], rank: int):
    """Pick a layer: the singular values of its learned updates (LoRA vs full fine-tuning)."""
    import ipywidgets as widgets

    def draw(ax, layer, top):
        draw_spectra(ax, {k: v[:top] for k, v in spectra_by_layer[layer].items()}, rank,
                     title=f"{layer}: singular values of the update")

    longest = max(map(len, spectra_by_layer))
    most = max(len(v) for spectra in spectra_by_layer.values() for v in spectra.values())
    return interactive_figure(draw, "Spectrum explorer",
                              layer=widgets.Dropdown(options=list(spectra_by_layer), **wide(longest)),
                              top=widgets.IntSlider(value=min(32, most), min=min(4, most), max=most, **WIDE))


def scaling_explorer(ranks=(1, 2, 4, 8, 16, 32, 64, 128, 256), alpha_max: float = 64.0):
    """Alpha slider: the update size across ranks under alpha/r and alpha/sqrt(r)."""
    import ipywidgets as widgets

    ranks = list(ranks)
    ymax = 1.05 * max(max(norms) for norms in update_norm_by_rank(ranks, alpha_max).values())
    return interactive_figure(lambda ax, alpha: draw_update_norms(ax, ranks, alpha, ymax=ymax),
                              "Scaling explorer",
                              alpha=widgets.FloatSlider(value=16.0, min=1.0, max=alpha_max, **WIDE))

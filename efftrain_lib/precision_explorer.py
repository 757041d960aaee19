"""The mixed precision chapter's sliders: plain functions that compute and draw what the widgets show.

The widgets (`loss_scale_explorer`, `rounding_explorer`) are thin shells around these functions, which
pytest tests (tests/test_precision.py); nbval never renders a widget, so the logic lives out here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from . import widgets as widgets_shell
from .models import language_model_loss
from .number_formats import NAMES, as_dtype, bit_fields, format_info, relative_error, representable_fractions

ACTIVATION_GRADS = "activation gradients (flow through backward in the low dtype)"
WEIGHT_GRADS = "weight gradients"


def collect_gradients(model: nn.Module, batch, loss_fn=language_model_loss) -> dict[str, torch.Tensor]:
    """One fp32 forward and backward; every gradient value, flattened, by kind.

    activation gradients: the grad_output of every nn.Linear. Under fp16 autocast these are the values
    that travel through backward in fp16, so they are the ones that underflow.
    weight gradients: every parameter's .grad (fp32 under autocast, since the master weights are fp32).
    Computed in fp32, so the histogram shows what fp16 would have to hold. The model's grads are cleared.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("batch must be a pair (inputs, targets)")
    device = next(model.parameters()).device
    inputs, targets = (t.to(device) for t in batch)
    activation: list[torch.Tensor] = []

    def hook(module, grad_input, grad_output):
        if grad_output[0] is not None:
            activation.append(grad_output[0].detach().float().flatten().cpu())

    handles = [m.register_full_backward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
    finally:
        for handle in handles:
            handle.remove()
    weights = torch.cat([p.grad.detach().float().flatten().cpu() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return {ACTIVATION_GRADS: torch.cat(activation), WEIGHT_GRADS: weights}


def log2_magnitudes(values: torch.Tensor) -> np.ndarray:
    """log2 |v| of the non-zero values (zeros have no place on a log axis)."""
    values = values.detach().double().flatten()
    values = values[values != 0]
    if values.numel() == 0:
        raise ValueError("no non-zero values to place on a log2 axis")
    return values.abs().log2().numpy()


def format_window(dtype="fp16") -> dict[str, float]:
    """log2 bounds of a format: below `zero` values round to 0; [min_subnormal, min_normal) is subnormal
    (precision lost); above `max` is inf."""
    info = format_info(dtype)
    return {"zero": math.log2(info.min_subnormal) - 1, "min_subnormal": math.log2(info.min_subnormal),
            "min_normal": math.log2(info.min_normal), "max": math.log2(info.max)}


def scale_sweep(values: torch.Tensor, log2_scales, dtype="fp16") -> dict[str, list[float]]:
    """For each loss scale 2**k: the share of values that underflow to 0, that are subnormal, that overflow."""
    out = {"underflow": [], "subnormal": [], "overflow": []}
    for k in log2_scales:
        fractions = representable_fractions(values, dtype, scale=2.0 ** k)
        for key in out:
            out[key].append(fractions[key])
    return out


def draw_gradient_histogram(ax, values_by_kind: dict[str, torch.Tensor], log2_scale: float = 0.0,
                            dtype="fp16", bins: int = 80) -> dict[str, dict[str, float]]:
    """Histogram of log2 |gradient| + log2(scale), with `dtype`'s window shaded. Returns the fractions
    (underflow / subnormal / overflow / normal) for each kind at this scale."""
    if not values_by_kind:
        raise ValueError("values_by_kind is empty")
    dtype = as_dtype(dtype)
    window = format_window(dtype)
    scale = 2.0 ** log2_scale
    lo, hi = -60.0, 40.0
    ax.axvspan(lo, window["zero"], color="tab:red", alpha=0.12, lw=0, label="rounds to 0")
    ax.axvspan(window["zero"], window["min_normal"], color="tab:orange", alpha=0.12, lw=0,
               label="subnormal (precision lost)")
    ax.axvspan(window["max"], hi, color="tab:purple", alpha=0.12, lw=0, label="inf")
    fractions = {}
    for kind, values in values_by_kind.items():
        logs = log2_magnitudes(values) + log2_scale
        ax.hist(np.clip(logs, lo, hi), bins=bins, range=(lo, hi), histtype="step", density=True, label=kind)
        fractions[kind] = representable_fractions(values, dtype, scale=scale)
    ax.set_xlim(lo, hi)
    ax.set(xlabel=f"log2 |gradient x scale|   (scale = 2^{log2_scale:g})", ylabel="density")
    first = next(iter(fractions.values()))
    ax.set_title(f"{NAMES[dtype]}, loss scale 2^{log2_scale:g}: {100 * first['underflow']:.2f}% flush to 0, "
                 f"{100 * first['subnormal']:.1f}% subnormal, {100 * first['overflow']:.3f}% inf "
                 f"({next(iter(fractions)).split(' (')[0]})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fractions


def draw_scale_sweep(ax, values: torch.Tensor, log2_scales=range(0, 33), dtype="fp16") -> None:
    """Underflow, subnormal and overflow shares against the loss scale: the window of good scales."""
    sweep = scale_sweep(values, list(log2_scales), dtype)
    for key, style in (("underflow", "o-"), ("subnormal", ".-"), ("overflow", "s-")):
        ax.plot(list(log2_scales), [100 * v for v in sweep[key]], style, markersize=3, label=key)
    ax.set(xlabel="log2(loss scale)", ylabel="% of gradient values", yscale="symlog",
           title=f"{NAMES[as_dtype(dtype)]}: what the loss scale does to the gradients")
    ax.legend(fontsize=8)


def rounding_rows(value: float) -> list[dict]:
    """`value` through fp32, fp16, bf16: the stored value, its bits and the relative error."""
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        fields = bit_fields(value, dtype)
        rows.append({"format": fields.dtype, "bits": f"{fields.sign} {fields.exponent} {fields.mantissa}",
                     "stored": fields.stored, "kind": fields.kind, "relative error": relative_error(value, dtype),
                     "meaning": fields.explain()})
    return rows


def rounding_table(value: float) -> str:
    """rounding_rows as fixed-width text."""
    lines = [f"typed: {value!r}"]
    for row in rounding_rows(value):
        error = row["relative error"]
        error_text = "inf" if math.isinf(error) else f"{error:.2e}"
        lines.append(f"{row['format']:>4}  {row['bits']:<34} stored {row['stored']!r:<24} "
                     f"rel. error {error_text:<9} {row['kind']}")
    return "\n".join(lines)


def parse_value(text: str) -> float:
    """A number typed in a text box ("1e-8", "65504", "0.1", "2**-24"); ValueError with the reason."""
    text = text.strip()
    try:
        if "**" in text:
            base, exponent = text.split("**", 1)
            return float(base) ** float(exponent.strip("() "))
        return float(text)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"cannot read {text!r} as a number (try 0.1, 1e-8 or 2**-24)") from exc


# ---- widgets (thin shells) ----

def render_png(draw, figsize=(8, 3.6), **values) -> bytes:
    """draw(ax, **values) as PNG bytes (efftrain_lib.widgets.render_png at this chapter's size)."""
    return widgets_shell.render_png(draw, figsize, **values)


def loss_scale_explorer(values_by_kind: dict[str, torch.Tensor]):
    """A loss-scale slider (log2) and a format: the histogram moves and the shares update live."""
    import ipywidgets as widgets

    layout = {"layout": {"width": "40em"}, "style": {"description_width": "10em"}}
    return widgets_shell.interactive_figure(
        lambda ax, log2_scale, dtype: draw_gradient_histogram(ax, values_by_kind, log2_scale, dtype),
        "Loss-scale explorer", figsize=(8, 3.6),
        log2_scale=widgets.IntSlider(value=0, min=-8, max=40, description="log2(loss scale)", **layout),
        dtype=widgets.Dropdown(options=["fp16", "bf16"], value="fp16", description="format", **layout))


def rounding_explorer(initial: str = "0.1"):
    """Type a value: its bits and rounding error in fp32, fp16 and bf16."""
    import ipywidgets as widgets

    out = widgets.Output()
    box = widgets.Text(value=initial, description="value", continuous_update=False)

    def show(text):
        with out:
            out.clear_output(wait=True)
            try:
                print(rounding_table(parse_value(text)))
            except ValueError as exc:
                print(exc)

    controls = widgets.interactive(show, text=box)
    return widgets_shell.explorer_box(
        [controls, out], "Rounding explorer (type a value; run the cell in JupyterLab to use it)")

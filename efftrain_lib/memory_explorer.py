"""The memory calculator's logic: plain functions the widget calls (pytest tests them; nbval never
renders a widget). The widget (`memory_calculator`) is a thin shell (efftrain_lib.widgets), as in lora_explorer.

A stacked bar by category (the estimate at its peak, the workspace allowance on top) beside the
everything-at-once sum, with lines at common GPU sizes.
"""

from __future__ import annotations

from efftrain_lib.liveplot import CATEGORY_COLORS
from efftrain_lib.memory import (
    ATTENTION_IMPLS,
    GB,
    OPTIMIZER_IMPLS,
    OPTIMIZERS,
    PEAK_CATEGORIES,
    PRECISIONS,
    PRESETS,
    TransformerShape,
    estimate_training_memory,
)
from efftrain_lib.memory_advisor import advise, compare_with_seed
from efftrain_lib.widgets import interactive_figure, wide

#: Common accelerator memory sizes, GB as sold (RTX 4090 / A10G 24, A100 40, A100 / H100 80, H200 141).
GPU_SIZES_GB = {"24 GB (RTX 4090)": 24, "40 GB (A100-40GB)": 40, "80 GB (A100/H100)": 80, "141 GB (H200)": 141}
CUSTOM = "custom"


def custom_shape(hidden_size: int = 4096, n_layers: int = 32, n_heads: int = 32, ffn_dim: int = 11008,
                 vocab_size: int = 32000, max_seq_len: int = 8192) -> TransformerShape:
    """A LLaMA-style shape from its numbers (clear errors for impossible ones)."""
    return TransformerShape(vocab_size, hidden_size, n_layers, n_heads, ffn_dim, max_seq_len, name="custom")


def calculate(model="Llama-2-7B", *, precision="bf16_autocast", optimizer="adam", optimizer_impl="foreach", lora_rank=0,
              checkpointing=False, batch_size=1, seq_len=2048, micro_batch_size=None, base_format="same",
              optimizer_state_format="same", lora_targets=("q_proj", "v_proj"), devices=1, sharding_stage=0,
              attention="flash", **custom):
    """The calculator's estimate: model is a preset name, "custom" (then `custom` holds custom_shape's
    arguments) or anything estimate_training_memory accepts. lora_rank 0 means full fine-tuning.
    base_format ("nf4_dq", ...), optimizer_state_format ("8bit", ...) and lora_targets ("all-linear"):
    the QLoRA chapter's settings; devices, sharding_stage: data parallelism and ZeRO (one device's figures);
    attention: "flash" (SDPA, no seq x seq matrix kept) or "eager" (the head count then matters)."""
    if model == CUSTOM:
        model = custom_shape(**custom)
    return estimate_training_memory(model, batch_size=batch_size, seq_len=seq_len, precision=precision,
                                    optimizer=optimizer, optimizer_impl=optimizer_impl, lora_rank=lora_rank or None,
                                    checkpointing=checkpointing, micro_batch_size=micro_batch_size,
                                    base_format=base_format, optimizer_state_format=optimizer_state_format,
                                    lora_targets=lora_targets, devices=devices, sharding_stage=sharding_stage,
                                    attention=attention)


def gpus_that_fit(estimate) -> list[str]:
    """The GPU sizes the predicted allocator peak (temporaries and the optimizer step included) fits in."""
    return [name for name, size in GPU_SIZES_GB.items() if estimate.allocator_peak <= size * GB]


def summary(estimate) -> str:
    """One paragraph: parameters, peak, phase, and the GPUs it fits."""
    fits = gpus_that_fit(estimate)
    s = estimate.settings
    adapters = estimate.trainable_params if s["lora_rank"] else 0  # LoRA's parameters come on top of the model's
    size = f"{(estimate.total_params - adapters) / 1e9:.3g}B parameters" + (
        f" + {adapters:,} in LoRA adapters (trainable)" if adapters else f", {estimate.trainable_params:,} trainable")
    return (f"{s['model']}: {size}, {s['attention']} attention. "
            f"Predicted peak {estimate.allocator_peak / GB:.1f} GB ({estimate.allocator_phase}, optimizer step "
            f"{s['optimizer_impl']}), of which {estimate.workspace / GB:.1f} GB temporaries; the tensors held "
            f"peak at {estimate.peak_bytes / GB:.1f} GB ({estimate.peak_phase}); everything at once would be "
            f"{sum(estimate.all_at_once.values()) / GB:.1f} GB. "
            + (f"Fits: {', '.join(fits)}." if fits else "Fits none of 24 / 40 / 80 / 141 GB."))


_COLORS = {**CATEGORY_COLORS, "workspace": "#bbbbbb"}  # the meter's plots' colours


def draw_calculator(ax, estimate, gpu_sizes=GPU_SIZES_GB) -> None:
    """Two stacked bars, each with the temporaries the allocator sees on top (`workspace`: gradients in
    flight, the optimizer step's buffers): the breakdown at the predicted peak, and every category at its
    own maximum (the back-of-envelope sum); lines at GPU sizes, in GB."""
    bars = {"at the peak": {**{c: getattr(estimate, c) for c in PEAK_CATEGORIES}, "workspace": estimate.workspace},
            "all at once": {**estimate.all_at_once, "workspace": estimate.workspace}}
    for x, (label, parts) in enumerate(bars.items()):
        bottom = 0.0
        for category, nbytes in parts.items():
            height = nbytes / GB
            name = "temporaries" if category == "workspace" else category.replace("_", " ")
            ax.bar(x, height, bottom=bottom, color=_COLORS[category], width=0.55, label=name if x == 0 else None)
            bottom += height
        ax.annotate(f"{bottom:.1f} GB", xy=(x, bottom), xytext=(0, 2), textcoords="offset points", ha="center",
                    fontsize=8)
    top = max(sum(p.values()) for p in bars.values()) / GB
    for name, size in gpu_sizes.items():
        if size <= 1.6 * top:
            ax.axhline(size, color="k", lw=0.8, ls="--")
            ax.annotate(name, xy=(1.32, size), fontsize=7, va="bottom", ha="right")
    ax.set_xticks(range(len(bars)), list(bars))
    ax.set_xlim(-0.5, 1.4)
    ax.set_ylabel("GB (10^9 bytes)")
    s = estimate.settings
    sharded = f", ZeRO-{s['sharding_stage']} on {s['devices']} devices" if s.get("devices", 1) > 1 else ""
    ax.set_title(f"{s['model']}: {s['precision']}, {s['optimizer']}, b={s['batch_size']}, s={s['seq_len']}{sharded}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def draw_from_controls(ax, model, precision, optimizer, lora_rank, checkpointing, batch_size, seq_len,
                       hidden_size=4096, n_layers=32, n_heads=32, ffn_dim=11008, optimizer_impl="foreach", devices=1,
                       sharding_stage=0, attention="flash") -> None:
    """What the calculator widget draws for one setting of its controls (an impossible custom shape or
    rank is written into the picture instead of raising)."""
    custom = dict(hidden_size=hidden_size, n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn_dim)
    try:
        est = calculate(model, precision=precision, optimizer=optimizer, optimizer_impl=optimizer_impl,
                        lora_rank=lora_rank, checkpointing=checkpointing, batch_size=batch_size, seq_len=seq_len,
                        devices=devices, sharding_stage=sharding_stage, attention=attention, **custom)
    except ValueError as error:
        ax.text(0.5, 0.5, str(error), ha="center", va="center", wrap=True, fontsize=8)
        ax.set_axis_off()
        return
    draw_calculator(ax, est)
    ax.figure.text(0.01, -0.06, summary(est), fontsize=7, wrap=True)


def memory_calculator():
    """Presets 125M..70B or a custom shape; precision, optimizer, LoRA, checkpointing, batch, sequence;
    devices and ZeRO stage (one device's memory)."""
    import ipywidgets as widgets

    wide_ = wide(26, label="7em")  # "batch_size" is clipped at the default 5em
    return interactive_figure(
        draw_from_controls, "Memory calculator",
        model=widgets.Dropdown(options=list(PRESETS) + [CUSTOM], value="Llama-2-7B", **wide_),
        precision=widgets.Dropdown(options=list(PRECISIONS), value="bf16_autocast", **wide_),
        optimizer=widgets.Dropdown(options=list(OPTIMIZERS), value="adam", **wide_),
        optimizer_impl=widgets.Dropdown(options=list(OPTIMIZER_IMPLS), value="foreach", description="step impl",
                                        **wide_),
        lora_rank=widgets.SelectionSlider(options=[0, 1, 2, 4, 8, 16, 32, 64, 128], value=0, **wide_),
        checkpointing=widgets.Checkbox(value=False, style=wide_["style"]),  # its box lines up with the rest
        # eager attention keeps each head's seq x seq probabilities: the one place the head count matters
        attention=widgets.Dropdown(options=list(ATTENTION_IMPLS), value="flash", **wide_),
        batch_size=widgets.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=1, **wide_),
        seq_len=widgets.SelectionSlider(options=[256, 512, 1024, 2048, 4096, 8192], value=2048, **wide_),
        hidden_size=widgets.IntText(value=4096, description="custom h", **wide_),
        n_layers=widgets.IntText(value=32, description="custom L", **wide_),
        n_heads=widgets.IntText(value=32, description="custom a", **wide_),
        ffn_dim=widgets.IntText(value=11008, description="custom ffn", **wide_),
        devices=widgets.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64, 128, 256], value=1, **wide_),
        sharding_stage=widgets.SelectionSlider(options=[0, 1, 2, 3], value=0, description="ZeRO stage", **wide_),
    )


def advisor_table(model="Llama-2-7B", *, batch_size=8, seq_len=2048, budget_gb=80.0, top=None, **kwargs) -> str:
    """The advisor's ranking as text, with the seed's order beside it."""
    options = advise(model, batch_size=batch_size, seq_len=seq_len, budget_gb=budget_gb, **kwargs)
    shown = options if top is None else options[:top]
    head = f"{model}, batch {batch_size} x {seq_len} tokens, budget {budget_gb:g} GB"
    return "\n".join([head] + [f"  {o}" for o in shown] + ["", compare_with_seed(options)])

"""The QLoRA chapter's measurements and sliders: plain functions pytest tests, thin widget shells.

* Quantization error by format (int4, FP4, NF4), block size and double quantization, with the bits per
  parameter read from the stored tensors' bytes: `quantization_error`, `error_table`,
  `draw_error_histogram`, the widget `error_explorer`.
* Memory of QLoRA setups for LLaMA-1 shapes (the paper's models) against a GPU budget, from the course's
  estimator (efftrain_lib.memory): `qlora_estimates`, `PAPER_65B`, `draw_budget`, the widget
  `budget_explorer`.
* Fine-tuning runs compared through the course's one loop (training.train), the meter and interleaved
  timing: `compare_finetuning`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from efftrain_lib.devices import model_device
from efftrain_lib.liveplot import CATEGORY_COLORS
from efftrain_lib.memory import GB, PEAK_CATEGORIES, MemoryEstimate, TransformerShape, estimate_training_memory
from efftrain_lib.meter import MemoryBreakdown, MemoryMeter
from efftrain_lib.qlora import quantized_layers
from efftrain_lib.quantization import QuantizedTensor
from efftrain_lib.timing import interleaved
from efftrain_lib.training import TrainLog, evaluate, train, trainable_parameters, training_step
from efftrain_lib.widgets import interactive_figure, wide

FORMATS = ("int4", "fp4", "nf4")

# ----------------------------------------------------------------------------------------------
# Quantization error
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizationError:
    """One tensor in one format: the errors (dequantized - original) and what the stored tensors hold."""

    code: str
    block_size: int
    double_quant: bool
    errors: torch.Tensor
    nbytes: int

    @property
    def bits_per_parameter(self) -> float:
        return self.nbytes * 8 / self.errors.numel()

    @property
    def rmse(self) -> float:
        return self.errors.pow(2).mean().sqrt().item()

    @property
    def max_abs(self) -> float:
        return self.errors.abs().max().item()


def quantization_error(x: torch.Tensor, code: str = "nf4", block_size: int = 64,
                       double_quant: bool = False) -> QuantizationError:
    """Quantize `x` (QuantizedTensor) and measure: errors, and the bytes actually stored."""
    q = QuantizedTensor.quantize(x, code, block_size=block_size, double_quant_block=256 if double_quant else None)
    return QuantizationError(code, block_size, double_quant, q.dequantize().reshape(-1) - x.detach().float().reshape(-1),
                             q.nbytes)


def error_table(tensors: dict, formats=FORMATS, block_size: int = 64, double_quant: bool = False) -> dict:
    """{name: {format: RMSE}} over named tensors (all weights concatenated per name)."""
    return {name: {f: quantization_error(t, f, block_size, double_quant).rmse for f in formats}
            for name, t in tensors.items()}


def draw_error_histogram(ax, x: torch.Tensor, code: str = "nf4", block_size: int = 64, double_quant: bool = False,
                         compare=FORMATS) -> None:
    """Histogram of the errors of `code` (filled) over the other formats' (outlines); bits per parameter
    measured from the stored bytes in the title."""
    edge = x.detach().float().abs().max().item() / 8
    edges = torch.linspace(-edge, edge, 81).tolist()
    for fmt in compare:
        result = quantization_error(x, fmt, block_size, double_quant)
        counts = torch.histc(result.errors.clamp(-edge, edge), bins=80, min=-edge, max=edge).tolist()
        label = f"{fmt}: RMSE {result.rmse:.2e}"
        if fmt == code:
            ax.stairs(counts, edges, fill=True, alpha=0.55, color="#4c72b0", label=label)
            chosen = result
        else:
            ax.stairs(counts, edges, lw=1.2, label=label)
    ax.set(xlabel="dequantized - original", ylabel="values", yscale="log")
    ax.set_title(f"{code}, block {block_size}, double quant {'on' if double_quant else 'off'}: "
                 f"{chosen.bits_per_parameter:.3f} bits/param (measured)", fontsize=9)
    ax.legend(fontsize=7)


def error_explorer(x: torch.Tensor):
    """Format, block size and double quantization -> error histogram and bits per parameter."""
    import ipywidgets as widgets

    def draw(ax, code, block_size, double_quant):
        draw_error_histogram(ax, x, code, block_size, double_quant)

    return interactive_figure(draw, "Quantization error explorer",
                              code=widgets.Dropdown(options=list(FORMATS), value="nf4", description="format"),
                              block_size=widgets.SelectionSlider(options=[16, 32, 64, 128, 256, 1024, 4096],
                                                                 value=64, description="block size", **wide(12, "7em")),
                              double_quant=widgets.Checkbox(value=False, description="double quantization"))


# ----------------------------------------------------------------------------------------------
# Memory against a budget: the paper's models with the course's estimator
# ----------------------------------------------------------------------------------------------

#: LLaMA-1 shapes (Touvron et al. 2023, Table 2): the models the QLoRA paper fine-tunes.
LLAMA1 = {
    "LLaMA-7B": TransformerShape(32000, 4096, 32, 32, 11008, 2048, name="LLaMA-7B"),
    "LLaMA-13B": TransformerShape(32000, 5120, 40, 40, 13824, 2048, name="LLaMA-13B"),
    "LLaMA-33B": TransformerShape(32000, 6656, 60, 52, 17920, 2048, name="LLaMA-33B"),
    "LLaMA-65B": TransformerShape(32000, 8192, 80, 64, 22016, 2048, name="LLaMA-65B"),
}

#: The paper's 65B fine-tune as the estimator's settings, each with where it comes from.
PAPER_65B = {
    "precision": ("bf16", "bf16 model, adapters and compute (qlora.py --bf16)"),
    "optimizer": ("adamw", "AdamW (qlora.py's paged_adamw_32bit)"),
    "optimizer_state_format": ("fp32", "32-bit Adam moments (paged_adamw_32bit)"),
    "optimizer_impl": ("fused", "bitsandbytes' paged AdamW updates in place, one kernel per tensor: no "
                                "foreach temporaries (torch's foreach AdamW would add 4 bytes per trainable param)"),
    "lora_rank": (64, "r = 64 (the paper's Table 9), alpha 16"),
    "lora_targets": ("all-linear", "LoRA on every Linear of the decoder (the paper: all layers are needed)"),
    "base_format": ("nf4_dq", "NF4 with double quantization, blocks 64 / 256; embeddings and lm_head 16-bit"),
    "checkpointing": (True, "gradient checkpointing on every layer (qlora.py's default)"),
    "batch_size": (1, "micro-batch 1 (qlora.py: per_device_train_batch_size 1, accumulation 16)"),
    "seq_len": (512, "512 tokens per sequence (our assumption: the paper trains on short dialogue turns)"),
}

#: What each bar of the budget picture changes on top of PAPER_65B's settings.
SETUPS = {
    "16-bit base": {"base_format": "same"},
    "int8 base": {"base_format": "int8"},
    "NF4 base": {"base_format": "nf4"},
    "NF4 + double quant": {},
    "+ 8-bit Adam state": {"optimizer_state_format": "8bit"},
}


def paper_settings(**overrides) -> dict:
    """PAPER_65B's settings as estimate_training_memory keyword arguments, with overrides."""
    return {**{name: value for name, (value, _) in PAPER_65B.items()}, **overrides}


def qlora_estimates(model="LLaMA-65B", **overrides) -> dict[str, MemoryEstimate]:
    """Every setup of SETUPS for one model (a LLAMA1 name or anything the estimator takes)."""
    shape = LLAMA1.get(model, model) if isinstance(model, str) else model
    return {label: estimate_training_memory(shape, **paper_settings(**{**change, **overrides}))
            for label, change in SETUPS.items()}


def full_finetune_estimate(model="LLaMA-65B", **overrides) -> MemoryEstimate:
    """16-bit full fine-tuning of the same model: bf16 weights and gradients, fp32 Adam moments."""
    shape = LLAMA1.get(model, model) if isinstance(model, str) else model
    settings = paper_settings(lora_rank=None, base_format="same", **overrides)
    settings.pop("lora_targets")
    return estimate_training_memory(shape, **settings)


def needed_gb(estimate: MemoryEstimate) -> float:
    """The estimate's allocator peak (what is held plus what lives only inside ops), in GB (10^9 bytes)."""
    return estimate.allocator_peak / GB


def draw_budget(ax, model: str = "LLaMA-65B", budget_gb: float = 48.0, seq_len: int = 512) -> None:
    """Stacked bars (weights, gradients, optimizer state, activations, workspace) per setup, and the budget."""
    estimates = qlora_estimates(model, seq_len=seq_len)
    labels = list(estimates)
    bottoms = [0.0] * len(labels)
    for category in (*PEAK_CATEGORIES, "workspace"):
        heights = [getattr(e, category) / GB for e in estimates.values()]
        ax.bar(range(len(labels)), heights, bottom=bottoms, width=0.6, label=category.replace("_", " "),
               color=CATEGORY_COLORS.get(category, "#bbbbbb"))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, total in enumerate(bottoms):
        ax.annotate(f"{total:.1f}", xy=(i, total), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8,
                    color="#1a7f37" if total <= budget_gb else "#cf222e")
    ax.axhline(budget_gb, color="k", ls="--", lw=1)
    ax.annotate(f"GPU budget {budget_gb:g} GB", xy=(len(labels) - 0.5, budget_gb), ha="right", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("GB (10^9 bytes)")
    ax.set_title(f"{model}: LoRA r=64 on all linears, bf16, checkpointing, 1 x {seq_len} tokens", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def budget_explorer():
    """A model-size slider (LLaMA-1 7B..65B) and a GPU budget slider -> memory of each QLoRA setup."""
    import ipywidgets as widgets

    return interactive_figure(draw_budget, "QLoRA memory vs a GPU budget", figsize=(8, 3.6),
                              model=widgets.SelectionSlider(options=list(LLAMA1), value="LLaMA-65B",
                                                            description="model", **wide(14, "7em")),
                              budget_gb=widgets.SelectionSlider(options=[16, 24, 40, 48, 80], value=48,
                                                                description="GPU GB", **wide(14, "7em")),
                              seq_len=widgets.SelectionSlider(options=[256, 512, 1024, 2048], value=512,
                                                              description="seq_len", **wide(14, "7em")))


# ----------------------------------------------------------------------------------------------
# Fine-tuning runs side by side
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneRun:
    """One configuration fine-tuned through training.train: its log, memory of one steady step (the
    meter), median seconds per step (interleaved with the other runs), validation loss, trainable count."""

    label: str
    log: TrainLog
    peak: MemoryBreakdown
    seconds_per_step: float
    val_loss: float
    trainable: int
    model: torch.nn.Module


def compare_finetuning(builders: dict[str, Callable[[], torch.nn.Module]], get_batch, *, steps: int,
                       make_optimizer: Callable, val_batches: list, timing_rounds: int = 5,
                       progress: bool = True) -> dict[str, FinetuneRun]:
    """Build, train `steps` steps (the same batches for all), meter one more step, then time one step of
    each in `timing_rounds` interleaved rounds (further batches, the same for all)."""
    if not builders or timing_rounds < 1:
        raise ValueError("compare_finetuning needs at least one builder and timing_rounds >= 1")
    models, optimizers, logs, peaks = {}, {}, {}, {}
    for label, build in builders.items():
        torch.manual_seed(0)
        model = models[label] = build()
        optimizer = optimizers[label] = make_optimizer(trainable_parameters(model))
        logs[label] = train(model, get_batch, steps=steps, optimizer=optimizer, progress=progress, desc=label)
        meter = MemoryMeter()
        training_step(model, optimizer, [get_batch(steps)], meter=meter)
        peaks[label] = meter.last.peak
    batch = get_batch(steps + 1)
    runs = {label: (lambda m=models[label], o=optimizers[label]: training_step(m, o, [batch])) for label in builders}
    timings = interleaved(runs, rounds=timing_rounds, device=model_device(next(iter(models.values()))),
                          warmup=1, progress=progress, desc="timing rounds")
    return {label: FinetuneRun(label, logs[label], peaks[label], timings.seconds[label],
                               evaluate(models[label], val_batches), sum(p.numel() for p in trainable_parameters(m)),
                               m)
            for label, m in models.items()}


def quantized_bits_per_parameter(model: torch.nn.Module) -> float:
    """Measured bits per weight of the model's quantized Linears (stored bytes over their weights)."""
    layers = list(quantized_layers(model).values())
    if not layers:
        raise ValueError("the model has no quantized layers: apply_qlora(model, ...) first")
    return 8 * sum(m.weight_nbytes for m in layers) / sum(math.prod(m.shape) for m in layers)

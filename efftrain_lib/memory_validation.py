"""The estimator's validation harness: run the configurations it predicts, and measure them.

`efftrain_lib.memory.estimate_training_memory` predicts a step's peak without running anything; this
module builds the same configuration for real with the library's own pieces (the tiny transformer,
`lora.apply_lora`, `checkpointing.enable_checkpointing`, the one step `training.training_step`) and
measures it with the meter, so the two can be compared configuration by configuration:

    record = measure_training_step(config, batch_size=4, seq_len=64, precision="bf16_autocast", lora_rank=4)
    estimate = estimate_training_memory(config, batch_size=4, seq_len=64, precision="bf16_autocast", lora_rank=4)
    relative_error(estimate.peak_bytes, record.peak.total)

`validation_grid()` is the grid chapter 0 and tests/test_memory.py run: fp32 / bf16 autocast / pure
bf16, Adam / SGD / SGD with momentum, LoRA on and off, checkpointing of every or some layers, gradient
accumulation, batch and sequence sizes, on two model shapes.
"""

from __future__ import annotations

from typing import Sequence

import torch

from efftrain_lib.checkpointing import enable_checkpointing
from efftrain_lib.devices import get_device
from efftrain_lib.lora import apply_lora
from efftrain_lib.memory import (
    OPTIMIZER_IMPLS,
    OPTIMIZERS,
    PRECISIONS,
    check_choice,
    checkpointed_layers,
    positive_int,
)
from efftrain_lib.meter import MemoryBreakdown, MemoryMeter, optimizer_state_bytes, parameter_bytes, profiler_peak_bytes
from efftrain_lib.models import TinyConfig, TinyTransformer
from efftrain_lib.training import training_step

__all__ = ["describe_settings", "measure_allocator_peak", "measure_training_memory", "measure_training_step",
           "relative_error", "validation_grid"]

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _build(config: TinyConfig, *, precision: str, optimizer: str, optimizer_impl: str, lora_rank: int | None,
           lora_targets, lora_alpha: float | None, checkpointing, seed: int):
    """The tiny transformer under a configuration, on the course's device, and its optimizer."""
    param_dtype, _, _ = PRECISIONS[precision]
    torch.manual_seed(seed)
    model = TinyTransformer(config)
    if lora_rank is not None:
        # the estimator's meaning of targets: layer names ("q_proj", "lm_head") or "all-linear"
        targets = [lora_targets] if isinstance(lora_targets, str) and lora_targets != "all-linear" else lora_targets
        apply_lora(model, targets, lora_rank, 2.0 * lora_rank if lora_alpha is None else lora_alpha)
    layers = checkpointed_layers(checkpointing, config.n_layers)
    if layers:
        # Reentrant, so the recomputation runs under the meter's saved-tensor hooks and is seen; a layer
        # input that does not require grad (frozen embeddings under LoRA) is made to, as HF does.
        enable_checkpointing(model, layers=sorted(layers), impl="torch-reentrant", input_requires_grad=True)
    model.to(device=get_device(), dtype=TORCH_DTYPES[param_dtype])
    trainable = [p for p in model.parameters() if p.requires_grad]
    impl = {"foreach": dict(foreach=True), "for-loop": dict(foreach=False), "fused": dict(fused=True)}[optimizer_impl]
    if optimizer in ("adam", "adamw"):
        opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)(trainable, lr=1e-4, **impl)
    else:
        opt = torch.optim.SGD(trainable, lr=1e-3, momentum=0.9 if optimizer == "sgd_momentum" else 0.0, **impl)
    return model, opt


def _training_setup(config, *, batch_size, seq_len, precision="fp32", optimizer="adam", optimizer_impl="foreach",
                    clip_grad=False, lora_rank=None, lora_targets=("q_proj", "v_proj"), lora_alpha=None,
                    checkpointing=False, micro_batch_size=None, seed=0):
    """The model, its optimizer (state already allocated by a warm-up step), and one window's step."""
    precision = check_choice("precision", precision, PRECISIONS)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    optimizer_impl = check_choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    positive_int("batch_size", batch_size)
    positive_int("seq_len", seq_len)
    if precision == "fp16_master":
        raise ValueError("fp16_master (a separate fp32 master copy) has no plain-torch counterpart to measure")
    micro = batch_size if micro_batch_size is None else positive_int("micro_batch_size", micro_batch_size)
    if micro > batch_size or batch_size % micro:
        raise ValueError(f"micro_batch_size ({micro}) must divide batch_size ({batch_size})")
    device = get_device()
    if precision == "fp16_autocast" and device.type == "cpu":
        raise ValueError("fp16_autocast is measured on CUDA only (fp16 matmuls on a CPU are ~50x slower)")
    model, opt = _build(config, precision=precision, optimizer=optimizer, optimizer_impl=optimizer_impl,
                        lora_rank=lora_rank, lora_targets=lora_targets, lora_alpha=lora_alpha,
                        checkpointing=checkpointing, seed=seed)
    compute = PRECISIONS[precision][1]
    autocast_dtype = TORCH_DTYPES[compute] if compute else None
    generator = torch.Generator().manual_seed(seed)

    def window(meter=None):
        micro_batches = [tuple(torch.randint(0, config.vocab_size, (micro, seq_len), generator=generator)
                               for _ in range(2)) for _ in range(batch_size // micro)]
        training_step(model, opt, micro_batches, autocast_dtype=autocast_dtype, meter=meter,
                      max_grad_norm=1.0 if clip_grad else None)

    window()  # warm-up: the optimizer allocates its state on its first step
    return model, opt, window, device


def measure_training_step(config, *, batch_size: int, seq_len: int, precision: str = "fp32",
                          optimizer: str = "adam", optimizer_impl: str = "foreach", clip_grad: bool = False,
                          lora_rank: int | None = None, lora_targets: str | Sequence[str] = ("q_proj", "v_proj"),
                          lora_alpha: float | None = None, checkpointing=False, micro_batch_size: int | None = None,
                          seed: int = 0):
    """Build the tiny transformer with `config` (a TinyConfig), train one warm-up step, then record the
    next one with MemoryMeter (CPU accounting on CPU; the CUDA allocator on a GPU). Returns the meter's
    StepRecord: `.peak` (a MemoryBreakdown) and `.timeline()` (memory within the step, for liveplot).

    Same arguments as estimate_training_memory (plus lora_alpha, default 2 * rank, which changes no
    byte); precision fp32, bf16_autocast, bf16, or fp16_autocast (CUDA only). The whole accumulation
    window (micro-batches and the optimizer step) is one metered step. Checkpointing wraps each chosen
    decoder layer in torch.utils.checkpoint (reentrant, so the meter sees the recomputation).
    """
    model, opt, window, device = _training_setup(
        config, batch_size=batch_size, seq_len=seq_len, precision=precision, optimizer=optimizer,
        optimizer_impl=optimizer_impl, clip_grad=clip_grad, lora_rank=lora_rank, lora_targets=lora_targets,
        lora_alpha=lora_alpha, checkpointing=checkpointing, micro_batch_size=micro_batch_size, seed=seed)
    meter = MemoryMeter(device)
    window(meter)
    return meter.records[-1]


def measure_training_memory(config, **settings) -> MemoryBreakdown:
    """The measured peak of measure_training_step(config, **settings), by category."""
    return measure_training_step(config, **settings).peak


def measure_allocator_peak(config, **settings) -> int:
    """The CPU allocator's figure for the same step: weights and optimizer state (resident before the
    step) plus torch.profiler's peak above that level, temporaries included. CPU only; slow (profiler)."""
    model, opt, window, device = _training_setup(config, **settings)
    if device.type != "cpu":
        raise ValueError("measure_allocator_peak reads the CPU allocator; on CUDA use measure_training_memory")
    resident = parameter_bytes(model) + optimizer_state_bytes(opt)
    return resident + profiler_peak_bytes(window).peak_bytes


def validation_grid() -> list[tuple[TinyConfig, dict]]:
    """The configurations the estimator is validated on: (TinyConfig, settings) pairs covering fp32 /
    bf16 autocast / pure bf16, Adam / SGD / SGD with momentum, the three implementations of the optimizer
    step (foreach, for-loop, fused) and clipping, LoRA on and off (q,v and all linear layers),
    checkpointing of every / some layers, gradient accumulation, and batch and sequence sizes, on two
    model shapes; the batch-16 rows are the ones above 8 MiB. Measured in well under a minute on 2 CPU cores."""
    base = TinyConfig(vocab_size=96, hidden_size=64, n_layers=4, n_heads=4, ffn_dim=172, max_seq_len=64)
    other = TinyConfig(vocab_size=128, hidden_size=48, n_layers=3, n_heads=3, ffn_dim=128, max_seq_len=32)
    grid = []
    for precision in ("fp32", "bf16_autocast"):
        for optimizer in ("adam", "sgd", "sgd_momentum"):
            for lora_rank in (None, 4):
                for checkpointing in (False, True):
                    grid.append((base, dict(batch_size=4, seq_len=64, precision=precision, optimizer=optimizer,
                                            lora_rank=lora_rank, checkpointing=checkpointing)))
    grid += [
        (base, dict(batch_size=1, seq_len=16, precision="fp32", optimizer="adam")),
        (base, dict(batch_size=1, seq_len=16, precision="fp32", optimizer="adam", optimizer_impl="for-loop")),
        (base, dict(batch_size=1, seq_len=16, precision="fp32", optimizer="adam", optimizer_impl="fused",
                    clip_grad=True)),
        (base, dict(batch_size=16, seq_len=32, precision="bf16_autocast", optimizer="adamw")),
        (base, dict(batch_size=8, seq_len=64, precision="fp32", optimizer="adam", micro_batch_size=2)),
        (base, dict(batch_size=8, seq_len=64, precision="bf16_autocast", optimizer="adam", micro_batch_size=4,
                    checkpointing=True)),
        (base, dict(batch_size=4, seq_len=64, precision="fp32", optimizer="adam", checkpointing=2)),
        (base, dict(batch_size=4, seq_len=64, precision="fp32", optimizer="adam", lora_rank=8,
                    lora_targets="all-linear")),
        (base, dict(batch_size=4, seq_len=64, precision="bf16_autocast", optimizer="adam", lora_rank=2,
                    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "lm_head"))),
        (base, dict(batch_size=4, seq_len=64, precision="bf16", optimizer="adam")),
        (base, dict(batch_size=4, seq_len=64, precision="bf16", optimizer="sgd_momentum", lora_rank=4,
                    checkpointing=True)),
        (base, dict(batch_size=16, seq_len=64, precision="fp32", optimizer="adam", optimizer_impl="for-loop")),
        (base, dict(batch_size=16, seq_len=64, precision="fp32", optimizer="adamw", checkpointing=True,
                    clip_grad=True)),
        (base, dict(batch_size=16, seq_len=64, precision="bf16_autocast", optimizer="adam", optimizer_impl="fused")),
        (base, dict(batch_size=16, seq_len=64, precision="bf16_autocast", optimizer="adam", checkpointing=True)),
        (base, dict(batch_size=16, seq_len=64, precision="bf16_autocast", optimizer="adam", lora_rank=4)),
        (base, dict(batch_size=16, seq_len=64, precision="fp32", optimizer="adam", micro_batch_size=4)),
        (base, dict(batch_size=16, seq_len=64, precision="fp32", optimizer="sgd_momentum", checkpointing=2)),
        (other, dict(batch_size=8, seq_len=32, precision="fp32", optimizer="adam")),
        (other, dict(batch_size=8, seq_len=32, precision="bf16_autocast", optimizer="sgd", lora_rank=4,
                     micro_batch_size=2)),
        (other, dict(batch_size=2, seq_len=8, precision="bf16_autocast", optimizer="adam", checkpointing=True)),
    ]
    return grid


def describe_settings(settings: dict) -> str:
    """A short label for a grid row: 'bf16_autocast adam lora4(q,v) ckpt b4 s64' (the optimizer step's
    implementation when it is not foreach, and 'clip' when clipping)."""
    parts = [settings.get("precision", "fp32"), settings.get("optimizer", "adam")]
    if settings.get("optimizer_impl", "foreach") != "foreach":
        parts[-1] += f"[{settings['optimizer_impl']}]"
    if settings.get("lora_rank"):
        targets = settings.get("lora_targets", ("q_proj", "v_proj"))
        short = "all" if targets == "all-linear" else ",".join(t.split("_")[0] for t in targets)
        parts.append(f"lora{settings['lora_rank']}({short})")
    ck = settings.get("checkpointing", False)
    if ck is True:
        parts.append("ckpt")
    elif ck:
        parts.append(f"ckpt{ck}")
    parts.append(f"b{settings['batch_size']}")
    if settings.get("micro_batch_size"):
        parts.append(f"mb{settings['micro_batch_size']}")
    parts.append(f"s{settings['seq_len']}")
    if settings.get("clip_grad"):
        parts.append("clip")
    return " ".join(parts)


def relative_error(predicted: int, measured: int) -> float:
    """(predicted - measured) / measured."""
    if measured <= 0:
        raise ValueError(f"measured bytes must be positive, got {measured}")
    return (predicted - measured) / measured

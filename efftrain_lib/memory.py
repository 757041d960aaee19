"""The memory estimator beside the meter: predict a training step's peak memory, by category.

    from efftrain_lib.memory import estimate_training_memory
    est = estimate_training_memory("Llama-2-7B", batch_size=1, seq_len=2048, precision="bf16_autocast",
                                   optimizer="adam", lora_rank=8, checkpointing=True)
    print(est.to_table())

How it works, and why it can be trusted:

* Model states are arithmetic: weights (parameters + buffers), one gradient per trainable parameter,
  the optimizer's state (Adam m and v, SGD momentum; Adam's `step` scalar per parameter tensor),
  an fp32 master copy where the precision policy keeps one.
* Activations are counted by replaying the forward of a LLaMA-style decoder symbolically, op by op,
  with the rule autograd itself follows (efftrain_lib.memory_replay): an op saves an input only if the
  gradient of *another* input needs it (a frozen Linear keeps its weight, not its input), storages are
  counted once, and autocast's casts are new storages. Nothing is run: a 70B model costs the same
  microseconds as a tiny one.
* The peak is not the sum. Backward frees each op's saved tensors while gradients appear, so the
  estimator replays backward too (node by node, checkpointed layers recomputed) and reports the
  largest moment, with the breakdown *at that moment* (`est.weights` .. `est.cast_weights`, summed in
  `est.peak_bytes`, or `est.as_breakdown()` for the meter's plots), beside the everything-at-once
  upper bound (`est.all_at_once`). Gradient accumulation keeps all gradients alive while later
  micro-batches run forward: that moment is in the replay too.

What is validated where (efftrain_lib.memory_validation, tests/test_memory.py,
notebooks/00_memory_anatomy.ipynb): the peak of a
steady-state step (optimizer state already allocated) against `MemoryMeter`'s CPU accounting of the
tiny transformer, over a grid of precision, optimizer, LoRA, checkpointing, batch and sequence sizes,
within 10% on every configuration (the test's tolerance). Today the match is byte-exact on the grid and
on seeded random configurations, because the replay follows the same saving rules the meter observes;
the 10% bar is the promise, the exactness a fact of torch 2.13 on CPU. The categories are the meter's. Temporaries inside an op (and CUDA workspaces) are not accounting's business: they are the
separate `workspace` allowance (the logits and their gradient), which is *not* part of `peak_bytes`;
with it, the estimate is compared with the CPU allocator's own peak (torch.profiler) as well.

Validated on CPU only, for what plain torch can run there: fp32, bf16 autocast and pure bf16; fp16
autocast has bf16's memory; fp16_master (an fp32 master copy in the optimizer) is arithmetic only.
Not yet compared with a CUDA allocator (measure_training_step reads it when a GPU is present): expect
its 512-byte rounding, cuBLAS workspaces and other attention kernels' saved tensors on top.
For HF LLaMA models and the presets the same rules apply (flash/SDPA attention by default); their
RMSNorm casts once where the tiny model's casts twice, a difference only for pure 16-bit weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from efftrain_lib.lora_math import check_rank, parameter_count
from efftrain_lib.memory_replay import CPU_RNG_STATE_BYTES, DTYPE_BYTES, Replay, StepPlan, build_tape
from efftrain_lib.quant_math import BASE_FORMATS, OPTIMIZER_STATE_FORMATS, optimizer_state_bytes
from efftrain_lib.meter import MIB, MemoryBreakdown
from efftrain_lib.optimizer_math import IMPLS, clip_temporaries, optimizer_step_temporaries
from efftrain_lib.sharding_math import check_sharding, shard_model_states

GB = 10**9
GIB = 2**30

#: precision policy -> (parameter dtype, compute dtype under autocast or None, master fp32 copy kept)
PRECISIONS = {
    "fp32": ("fp32", None, False),
    "bf16_autocast": ("fp32", "bf16", False),  # torch.autocast: fp32 weights, bf16 matmuls (HF: 18 B/param)
    "fp16_autocast": ("fp32", "fp16", False),  # same memory as bf16 autocast (+ a GradScaler: a few scalars)
    "bf16": ("bf16", None, False),  # the whole model in bf16, optimizer state in bf16 (torch's default)
    "fp16_master": ("fp16", None, True),  # fp16 model + fp32 master/m/v (Micikevicius; EleutherAI's 16 B/param)
}

#: optimizer -> number of states per trainable element (each in the parameter's dtype), step scalars?
OPTIMIZERS = {
    "adam": (2, True),
    "adamw": (2, True),
    "sgd_momentum": (1, False),
    "sgd": (0, False),
}

MAX_LAYERS = 1024

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_IMPLS = ("flash", "eager")
OPTIMIZER_IMPLS = IMPLS  # torch.optim's three step implementations

SOURCE_ESTIMATE = "estimate: efftrain_lib.memory.estimate_training_memory (peak of a steady-state step)"


# ----------------------------------------------------------------------------------------------
# Shapes and presets
# ----------------------------------------------------------------------------------------------


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class TransformerShape:
    """The shape of a LLaMA-style decoder (the tiny transformer and the LLaMA family are both this).

    positions: "learned" (an embedding table, as the tiny model and GPT) or "rope" (no parameters).
    n_kv_heads: grouped-query attention (k_proj, v_proj are hidden x n_kv_heads * head_dim); None = n_heads.
    """

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    max_seq_len: int
    n_kv_heads: int | None = None
    positions: str = "rope"
    tied_embeddings: bool = False
    name: str = "custom"

    def __post_init__(self):
        for f in ("vocab_size", "hidden_size", "n_layers", "n_heads", "ffn_dim", "max_seq_len"):
            positive_int(f, getattr(self, f))
        if self.n_layers > MAX_LAYERS:  # the replay walks every layer: a typo of 10^9 layers would hang
            raise ValueError(f"n_layers must be at most {MAX_LAYERS} (the deepest published LLMs have ~130), "
                             f"got {self.n_layers}")
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})")
        kv = self.kv_heads
        positive_int("n_kv_heads", kv)
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")
        if self.positions not in ("learned", "rope"):
            raise ValueError(f"positions must be 'learned' or 'rope', got {self.positions!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of each Linear in one decoder layer."""
        h, f, kv = self.hidden_size, self.ffn_dim, self.kv_dim
        return {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
                "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}

    def num_parameters(self) -> int:
        h = self.hidden_size
        layer = sum(o * i for o, i in self.linear_shapes().values()) + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tied_embeddings else 2)
        positions = self.max_seq_len * h if self.positions == "learned" else 0
        return self.n_layers * layer + embeddings + positions + h


#: Model presets, 125M to 70B, all LLaMA-style (RMSNorm, SwiGLU MLP), shapes from the published configs.
PRESETS: dict[str, TransformerShape] = {
    "125M (GPT-3 Small shape)": TransformerShape(50257, 768, 12, 12, 2048, 2048, positions="learned",
                                                 tied_embeddings=True, name="125M (GPT-3 Small shape)"),
    "SmolLM2-360M": TransformerShape(49152, 960, 32, 15, 2560, 8192, n_kv_heads=5, tied_embeddings=True,
                                     name="SmolLM2-360M"),
    "TinyLlama-1.1B": TransformerShape(32000, 2048, 22, 32, 5632, 2048, n_kv_heads=4, name="TinyLlama-1.1B"),
    "Llama-2-7B": TransformerShape(32000, 4096, 32, 32, 11008, 4096, name="Llama-2-7B"),
    "Llama-3-8B": TransformerShape(128256, 4096, 32, 32, 14336, 8192, n_kv_heads=8, name="Llama-3-8B"),
    "Llama-2-13B": TransformerShape(32000, 5120, 40, 40, 13824, 4096, name="Llama-2-13B"),
    "Llama-2-70B": TransformerShape(32000, 8192, 80, 64, 28672, 4096, n_kv_heads=8, name="Llama-2-70B"),
}


def shape_of(model_or_shape) -> TransformerShape:
    """A TransformerShape from a preset name, a TransformerShape, a TinyConfig, a TinyTransformer,
    or a Hugging Face LLaMA-style model/config (hidden_size, num_hidden_layers, ...)."""
    if isinstance(model_or_shape, TransformerShape):
        return model_or_shape
    if isinstance(model_or_shape, str):
        if model_or_shape not in PRESETS:
            raise ValueError(f"unknown model preset {model_or_shape!r}; presets: {', '.join(PRESETS)}")
        return PRESETS[model_or_shape]
    config = getattr(model_or_shape, "config", model_or_shape)
    if all(hasattr(config, a) for a in ("vocab_size", "hidden_size", "n_layers", "n_heads", "ffn_dim", "max_seq_len")):
        return TransformerShape(config.vocab_size, config.hidden_size, config.n_layers, config.n_heads, config.ffn_dim,
                                config.max_seq_len, positions="learned", name="TinyTransformer")
    if all(hasattr(config, a) for a in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "intermediate_size", "vocab_size")):
        return TransformerShape(config.vocab_size, config.hidden_size, config.num_hidden_layers,
                                config.num_attention_heads, config.intermediate_size,
                                getattr(config, "max_position_embeddings", 2048),
                                n_kv_heads=getattr(config, "num_key_value_heads", None), positions="rope",
                                tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                                name=type(model_or_shape).__name__)
    raise ValueError(
        f"cannot read a transformer shape from {type(model_or_shape).__name__}: pass a preset name "
        f"({', '.join(PRESETS)}), a TransformerShape, a TinyConfig/TinyTransformer or a LLaMA-style HF config"
    )


# ----------------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------------

PEAK_CATEGORIES = ("weights", "gradients", "optimizer_state", "activations", "cast_weights")


@dataclass
class MemoryEstimate:
    """Predicted memory of one steady-state training step (bytes).

    weights .. cast_weights   the breakdown at the predicted peak (the meter's categories)
    peak_phase                when the peak happens ("end of forward", "backward through layer 3", ...)
    all_at_once               every category at its own maximum, summed: the usual back-of-envelope
                              figure, an upper bound of the peak
    allocator_peak            what an allocator would report as the step's peak: the same tensors plus
                              those alive only while an op runs (gradients in flight, the optimizer
                              step's temporaries, clipping) and the window's input ids and labels
    allocator_phase           when that peak happens (often not where accounting's peak is)
    workspace                 allocator_peak - peak_bytes: what accounting does not see (derived)
    """

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    cast_weights: int
    peak_phase: str
    all_at_once: dict
    allocator_peak: int
    allocator_phase: str
    total_params: int
    trainable_params: int
    settings: dict = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return sum(getattr(self, c) for c in PEAK_CATEGORIES)

    @property
    def total(self) -> int:
        return self.peak_bytes

    @property
    def workspace(self) -> int:
        return self.allocator_peak - self.peak_bytes

    @property
    def model_states(self) -> int:
        """Weights + gradients + optimizer state at their full size (independent of batch and sequence)."""
        a = self.all_at_once
        return a["weights"] + a["gradients"] + a["optimizer_state"]

    def as_breakdown(self) -> MemoryBreakdown:
        """The peak as a meter MemoryBreakdown (liveplot.plot_breakdowns draws it beside measurements)."""
        return MemoryBreakdown(self.weights, self.gradients, self.optimizer_state, self.activations,
                               self.cast_weights, 0, SOURCE_ESTIMATE)

    def as_dict(self) -> dict:
        out = {c: getattr(self, c) for c in PEAK_CATEGORIES}
        out.update(peak=self.peak_bytes, peak_phase=self.peak_phase, allocator_peak=self.allocator_peak,
                   allocator_phase=self.allocator_phase, workspace=self.workspace,
                   total_params=self.total_params, trainable_params=self.trainable_params)
        return out

    def to_table(self, unit: str = "auto") -> str:
        unit, scale = _unit(self.peak_bytes, unit)
        width = 16
        lines = [f"{'category':<{width}} {'at peak':>12} {'all at once':>12}"]
        for c in PEAK_CATEGORIES:
            lines.append(f"{c:<{width}} {getattr(self, c) / scale:>8.3f} {unit:<3} "
                         f"{self.all_at_once[c] / scale:>8.3f} {unit}")
        lines.append(f"{'total':<{width}} {self.peak_bytes / scale:>8.3f} {unit:<3} "
                     f"{sum(self.all_at_once.values()) / scale:>8.3f} {unit}")
        lines.append(f"peak: {self.peak_phase}")
        lines.append(f"allocator's peak {self.allocator_peak / scale:.3f} {unit} ({self.allocator_phase}): "
                     f"+{self.workspace / scale:.3f} {unit} that accounting does not see")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()


def _unit(nbytes: int, unit: str) -> tuple[str, float]:
    units = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": GIB, "GB": GB}
    if unit == "auto":
        unit = "GB" if nbytes >= GB else "MiB"
    if unit not in units:
        raise ValueError(f"unit must be one of {list(units)} or 'auto', got {unit!r}")
    return unit, units[unit]


# ----------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
    return value.lower()


def checkpointed_layers(checkpointing, n_layers: int) -> frozenset:
    if checkpointing is None or checkpointing is False or checkpointing == "none":
        return frozenset()
    if checkpointing is True or checkpointing in ("full", "every_layer", "all"):
        return frozenset(range(n_layers))
    if isinstance(checkpointing, int) and not isinstance(checkpointing, bool):
        if not 0 <= checkpointing <= n_layers:
            raise ValueError(f"checkpointing={checkpointing}: number of checkpointed layers must be in [0, {n_layers}]")
        return frozenset(range(checkpointing))
    if isinstance(checkpointing, (list, tuple, set, frozenset, range)):
        layers = frozenset(checkpointing)
        bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"checkpointing: layer indices must be in [0, {n_layers}), got {sorted(bad, key=str)}")
        return layers
    raise ValueError(f"checkpointing must be False, True, a number of layers or a list of layer indices; "
                     f"got {checkpointing!r}")


def _lora_targets(targets, shape: TransformerShape, rank: int) -> tuple:
    if isinstance(targets, str):
        targets = LINEAR_NAMES if targets == "all-linear" else (targets,)
    targets = tuple(targets)
    known = LINEAR_NAMES + (() if shape.tied_embeddings else ("lm_head",))
    unknown = [x for x in targets if x not in known]
    if not targets or unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown or targets}; choose from {', '.join(known)} or 'all-linear'")
    shapes = {**shape.linear_shapes(), "lm_head": (shape.vocab_size, shape.hidden_size)}
    for x in targets:
        check_rank(rank, *shapes[x], layer=x)
    return targets


def _lora_from_model(model) -> tuple[int, tuple] | None:
    """(rank, target names) of the LoRA layers a model carries, or None. Read by their interface
    (a `rank` and a `lora_A` parameter, as efftrain_lib.lora.LoRALinear has), so that the estimator
    does not depend on the technique's module."""
    modules = getattr(model, "named_modules", None)
    if modules is None:
        return None
    layers = {name: m for name, m in modules() if isinstance(getattr(m, "rank", None), int) and hasattr(m, "lora_A")}
    if not layers:
        return None
    ranks = {layer.rank for layer in layers.values()}
    if len(ranks) != 1:
        raise ValueError(f"the model's LoRA layers have different ranks {sorted(ranks)}; pass lora_rank= explicitly")
    return ranks.pop(), tuple(sorted({name.rsplit(".", 1)[-1] for name in layers}))


def estimate_training_memory(
    model,
    *,
    batch_size: int,
    seq_len: int | None = None,
    precision: str = "fp32",
    optimizer: str = "adam",
    lora_rank: int | None = None,
    lora_targets: str | Sequence[str] = ("q_proj", "v_proj"),
    checkpointing=False,
    micro_batch_size: int | None = None,
    attention: str = "flash",
    optimizer_impl: str = "foreach",
    clip_grad: bool = False,
    base_format: str = "same",
    optimizer_state_format: str = "same",
    devices: int = 1,
    sharding_stage: int = 0,
) -> MemoryEstimate:
    """Predict the peak memory of one steady-state training step, by category (bytes).

    model            a preset name (see PRESETS), a TransformerShape, a TinyConfig / TinyTransformer,
                     or a LLaMA-style HF model or config. A model that already carries LoRA layers
                     (efftrain_lib.lora) supplies lora_rank and lora_targets.
    batch_size       sequences per optimizer step; seq_len tokens each (default: the model's maximum)
    precision        fp32 | bf16_autocast | fp16_autocast | bf16 | fp16_master (see PRECISIONS)
    optimizer        adam | adamw | sgd | sgd_momentum
    lora_rank        None for full fine-tuning; else a LoRA of this rank on lora_targets
                     (names of the layer's Linears, "lm_head", or "all-linear"); everything else frozen
    checkpointing    False, True (every decoder layer), n (the first n layers) or a list of layer indices
    micro_batch_size gradient accumulation: batch_size is split into micro-batches of this size
    attention        "flash" (SDPA: no seq x seq matrix kept) or "eager" (softmax probabilities kept)
    optimizer_impl   how torch.optim runs the step: "foreach" (its default on CUDA), "for-loop" (its
                     default on CPU) or "fused" (fused=True); changes only the allocator's peak
    clip_grad        clip_grad_norm_ before the step (a few bytes per parameter tensor)
    base_format      the frozen base's Linears under LoRA: "same" (the precision's dtype), "int8", "nf4"
                     (4-bit, fp32 scale per 64: 4.5 bits) or "nf4_dq" (double-quantized scales: 4.127 bits),
                     as efftrain_lib.qlora stores them (exact bytes per tensor, efftrain_lib.quant_math);
                     embeddings, norms and the output layer keep the precision's dtype, as in QLoRA
    optimizer_state_format  "same" (the precision's), "fp32" (e.g. bf16 adapters with 32-bit Adam, as
                     QLoRA's paged_adamw_32bit), or "8bit" (block-wise, efftrain_lib.optim8bit)
    devices          data-parallel devices (batch_size is then per device); the figures are one device's
    sharding_stage   0 every device keeps all model states (DDP); ZeRO 1 shards the optimizer state,
                     2 also the gradients, 3 also the weights (FSDP): those are divided by `devices`
                     (efftrain_lib.sharding_math; FSDP's transient all-gathered blocks are not counted)
    """
    shape = shape_of(model)
    batch_size = positive_int("batch_size", batch_size)
    seq = shape.max_seq_len if seq_len is None else positive_int("seq_len", seq_len)
    if shape.positions == "learned" and seq > shape.max_seq_len:
        raise ValueError(f"seq_len {seq} exceeds the model's learned positions ({shape.max_seq_len})")
    precision = check_choice("precision", precision, PRECISIONS)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    attention = check_choice("attention", attention, ATTENTION_IMPLS)
    optimizer_impl = check_choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    base_format = check_choice("base_format", base_format, ("same", *BASE_FORMATS))
    optimizer_state_format = check_choice("optimizer_state_format", optimizer_state_format, OPTIMIZER_STATE_FORMATS)
    devices, sharding_stage = check_sharding(devices, sharding_stage)
    micro = batch_size if micro_batch_size is None else positive_int("micro_batch_size", micro_batch_size)
    if micro > batch_size or batch_size % micro:
        raise ValueError(f"micro_batch_size ({micro}) must divide batch_size ({batch_size})")
    if lora_rank is None and not isinstance(model, (str, TransformerShape)):
        found = _lora_from_model(model)
        if found is not None:
            lora_rank, lora_targets = found
    targets: tuple = ()
    if lora_rank is not None:
        lora_rank = positive_int("lora_rank", lora_rank)
        targets = _lora_targets(lora_targets, shape, lora_rank)
    elif base_format != "same":
        raise ValueError(f"base_format={base_format!r} quantizes a frozen base: it needs LoRA (lora_rank), as QLoRA")
    param_dtype, compute, master = PRECISIONS[precision]
    plan = StepPlan(shape, micro, seq, param_dtype, compute, lora_rank, targets,
                    checkpointed_layers(checkpointing, shape.n_layers), attention, base_format != "same")
    tape, params = build_tape(plan)

    total_params = sum(p.numel for p in params)
    trainable = [p for p in params if p.trainable]
    n_trainable = sum(p.numel for p in trainable)
    elem = DTYPE_BYTES[param_dtype]
    stored = BASE_FORMATS.get(base_format)
    weights = sum(stored.bytes(p.numel) if p.quantized else p.numel * elem for p in params)
    n_states, step_scalars = OPTIMIZERS[optimizer]
    state_elem = 4 if master else elem  # a master-weight optimizer keeps its fp32 copy and m, v in fp32
    optimizer_state = (sum(optimizer_state_bytes(p.numel, n_states, optimizer_state_format, state_elem)
                           for p in trainable)
                       + n_trainable * (4 if master else 0) + (4 * len(trainable) if step_scalars else 0))
    grad_bytes = {id(p): p.numel * elem for p in trainable}
    weights, grad_bytes, optimizer_state = shard_model_states(weights, grad_bytes, optimizer_state, devices,
                                                              sharding_stage)

    base = {"weights": weights, "optimizer_state": optimizer_state}
    steps = batch_size // micro
    batch_bytes = 2 * batch_size * seq * DTYPE_BYTES["int64"]  # every micro-batch's ids and labels
    numels = [p.numel for p in trainable]
    if optimizer_state_format == "8bit":
        # efftrain_lib.optim8bit, one tensor at a time: m and v dequantized to fp32, then sqrt(v) and its
        # division (an estimate from its code, not yet checked against an allocator)
        step_temporaries = 4 * max(numels, default=0) * 4 if n_states else 0
    else:
        step_temporaries = optimizer_step_temporaries(optimizer, optimizer_impl, numels,
                                                      4 if optimizer_state_format == "fp32" else state_elem)
    if sharding_stage >= 1 and devices > 1:  # each rank steps its shard of the parameters only
        step_temporaries = -(-step_temporaries // devices)
    clipping = clip_temporaries(len(trainable)) if clip_grad else 0
    replays = []
    for grads_alive in ([False, True] if steps > 1 else [False]):
        r = Replay(base, grad_bytes, grads_alive, batch_bytes, CPU_RNG_STATE_BYTES)
        r._observe("start of step")
        r.forward(tape.nodes)
        r.backward(tape.nodes)
        replays.append(r)
    replays[-1].optimizer_step(step_temporaries, clipping)
    best = max(replays, key=lambda r: r.best)
    state = best.best_state
    all_at_once = {"weights": weights, "gradients": sum(grad_bytes.values()), "optimizer_state": optimizer_state,
                   "activations": max(r.max_cat["activations"] for r in replays),
                   "cast_weights": max(r.max_cat["cast_weights"] for r in replays)}
    phase = state["phase"]
    if steps > 1 and best is replays[-1]:
        phase += " (a later micro-batch: all gradients already allocated)"
    alloc = max(replays, key=lambda r: r.alloc_best)
    alloc_phase = alloc.alloc_phase
    if steps > 1 and alloc is replays[-1] and not alloc_phase.startswith(("optimizer", "clipping")):
        alloc_phase += " (a later micro-batch)"
    return MemoryEstimate(
        weights=state["weights"], gradients=state["gradients"], optimizer_state=state["optimizer_state"],
        activations=state["activations"], cast_weights=state["cast_weights"], peak_phase=phase,
        all_at_once=all_at_once, allocator_peak=alloc.alloc_best, allocator_phase=alloc_phase,
        total_params=total_params, trainable_params=n_trainable,
        settings={"model": shape.name, "devices": devices, "sharding_stage": sharding_stage,
                  "batch_size": batch_size, "seq_len": seq, "precision": precision,
                  "optimizer": optimizer, "lora_rank": lora_rank, "lora_targets": targets,
                  "checkpointed_layers": len(plan.checkpointed), "micro_batch_size": micro,
                  "accumulation_steps": steps, "attention": attention, "optimizer_impl": optimizer_impl,
                  "clip_grad": clip_grad, "base_format": base_format,
                  "optimizer_state_format": optimizer_state_format},
    )


# ----------------------------------------------------------------------------------------------
# Model-state arithmetic (the bytes-per-parameter figures) and accelerate's count
# ----------------------------------------------------------------------------------------------


def bytes_per_parameter(precision: str = "fp32", optimizer: str = "adam") -> dict:
    """Model-state bytes per trainable parameter under a policy: weights, grads, optimizer (with master copy).

    fp32 + Adam = 4 + 4 + 8 = 16. bf16 autocast + Adam = 4 + 4 + 8 = 16 plus 2 for the bf16 weight
    copies that live during forward/backward = 18 (Hugging Face's figure). fp16_master + Adam =
    2 + 2 + (4 + 8) = 16 (EleutherAI's figure).
    """
    precision = check_choice("precision", precision, PRECISIONS)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    param_dtype, compute, master = PRECISIONS[precision]
    elem = DTYPE_BYTES[param_dtype]
    out = {"weights": elem, "gradients": elem,
           "optimizer_state": OPTIMIZERS[optimizer][0] * (4 if master else elem) + (4 if master else 0),
           "cast_weights": DTYPE_BYTES[compute] if compute else 0}
    out["total"] = sum(out.values())
    return out


def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False) -> int:
    """Model-state bytes for `num_params` trainable parameters (Exercise 0.1's API, hardened): weights +
    gradients + fp32 optimizer state (Adam 2, SGD with momentum 1, SGD 0 states) + an fp32 master copy."""
    positive_int("num_params", num_params)
    for name, value in (("weight_bytes", weight_bytes), ("grad_bytes", grad_bytes)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite positive number of bytes per element, got {value!r}")
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    per_param = weight_bytes + grad_bytes + 4 * OPTIMIZERS[optimizer][0] + (4 if master_weights else 0)
    return int(num_params * per_param)


def lora_trainable_params(shapes, rank) -> int:
    """Trainable parameters of a rank-`rank` LoRA on layers of (out_features, in_features) shapes
    (Exercise 0.2's API, hardened): sum of (out + in) * rank; rank <= min(out, in) for every layer."""
    check_rank(rank)
    total = 0
    for shape in shapes:
        if len(shape) != 2:
            raise ValueError(f"each shape must be (out_features, in_features), got {shape!r}")
        out_features, in_features = (positive_int("layer size", d) for d in shape)
        total += parameter_count(out_features, in_features, rank)
    return total


RECOMPUTE = ("none", "selective", "full")


def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none") -> int:
    """Korthikanti et al. 2022's activation bytes for a GPT-style transformer (16-bit, no tensor
    parallelism): per layer sbh(34 + 5as/h), 34sbh with selective, 2sbh with full recomputation."""
    s, b, h, a, n = (positive_int(name, v) for name, v in (("seq_len", seq_len), ("batch_size", batch_size),
                     ("hidden_size", hidden_size), ("n_heads", n_heads), ("n_layers", n_layers)))
    recompute = check_choice("recompute", recompute, RECOMPUTE)
    per_layer = {"none": 34 * s * b * h + 5 * a * s * s * b, "selective": 34 * s * b * h, "full": 2 * s * b * h}
    return per_layer[recompute] * n


def accelerate_estimate(model_or_shape, mixed_precision: str = "float32") -> dict:
    """What `accelerate estimate-memory` would report for this model, computed offline.

    The same functions the CLI calls: accelerate.utils.calculate_maximum_sizes on the model built
    on the meta device (transformers LlamaConfig -> LlamaForCausalLM under init_empty_weights, no
    download), then accelerate.commands.estimate.estimate_training_usage. Returns bytes: `model`
    (parameters + buffers in fp32) and `training` (the figure it prints as "Training using Adam":
    the largest of its model / gradients / optimizer / step entries).
    """
    from accelerate import init_empty_weights
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes
    from transformers import LlamaConfig, LlamaForCausalLM

    s = shape_of(model_or_shape)
    if s.positions != "rope":
        raise ValueError("accelerate_estimate builds a LlamaForCausalLM (rotary positions); "
                         f"{s.name} has learned position embeddings")
    config = LlamaConfig(vocab_size=s.vocab_size, hidden_size=s.hidden_size, num_hidden_layers=s.n_layers,
                         num_attention_heads=s.n_heads, num_key_value_heads=s.kv_heads,
                         intermediate_size=s.ffn_dim, max_position_embeddings=s.max_seq_len,
                         tie_word_embeddings=s.tied_embeddings)
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    total, _largest = calculate_maximum_sizes(model)
    usage = estimate_training_usage(total, mixed_precision)
    return {"model": int(total), "training": int(max(usage.values())), "usage": usage}


__all__ = [
    "PRESETS", "PRECISIONS", "OPTIMIZERS", "TransformerShape", "MemoryEstimate", "shape_of",
    "estimate_training_memory", "bytes_per_parameter", "accelerate_estimate", "training_memory_bytes",
    "lora_trainable_params", "activation_bytes",
]

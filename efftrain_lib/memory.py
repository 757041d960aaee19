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
  with the rule autograd itself follows: an op saves an input only if the gradient of *another*
  input needs it (a frozen Linear keeps its weight, not its input), storages are counted once, and
  autocast's casts are new storages (a Linear casts its input on every call; trainable weights are cast
  once per forward and cached). Nothing is run: a 70B model costs the same microseconds as a tiny one.
* The peak is not the sum. Backward frees each op's saved tensors while gradients appear, so the
  estimator replays backward too (node by node, checkpointed layers recomputed) and reports the
  largest moment, with the breakdown *at that moment* (`est.weights` .. `est.cast_weights`, summed in
  `est.peak_bytes`, or `est.as_breakdown()` for the meter's plots), beside the everything-at-once
  upper bound (`est.all_at_once`). Gradient accumulation keeps all gradients alive while later
  micro-batches run forward: that moment is in the replay too.

What is validated where (tests/test_memory.py, notebooks/00_memory_anatomy.ipynb): the peak of a
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

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from efftrain_lib.meter import MIB, MemoryBreakdown

GB = 10**9
GIB = 2**30

#: bytes per element
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int64": 8}

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

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_IMPLS = ("flash", "eager")

SOURCE_ESTIMATE = "estimate: efftrain_lib.memory.estimate_training_memory (peak of a steady-state step)"


# ----------------------------------------------------------------------------------------------
# Shapes and presets
# ----------------------------------------------------------------------------------------------


def _positive_int(name: str, value) -> int:
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
            _positive_int(f, getattr(self, f))
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})")
        kv = self.kv_heads
        _positive_int("n_kv_heads", kv)
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
    if all(hasattr(config, a) for a in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim", "max_seq_len")):
        return TransformerShape(config.vocab_size, config.dim, config.n_layers, config.n_heads, config.ffn_dim,
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
    workspace                 rough allowance for temporaries accounting does not see (not in peak)
    """

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    cast_weights: int
    peak_phase: str
    all_at_once: dict
    workspace: int
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
        out.update(peak=self.peak_bytes, peak_phase=self.peak_phase, workspace=self.workspace,
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
        lines.append(f"peak: {self.peak_phase}; workspace allowance (not in total): "
                     f"{self.workspace / scale:.3f} {unit}")
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
# The symbolic forward: which tensors autograd saves
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Value:
    nbytes: int
    dtype: str
    rg: bool  # requires grad
    kind: str = "activations"  # or "cast_weights"


@dataclass(eq=False)
class _Param:
    name: str
    numel: int
    dtype: str
    trainable: bool

    @property
    def rg(self) -> bool:
        return self.trainable


@dataclass(eq=False)
class _Node:
    label: str
    saved: list  # _Value (parameters are never counted: they are weights)
    params: list  # _Param whose gradient this node produces
    segment: list | None = None  # a checkpointed layer: the nodes it recomputes in backward


class _Tape:
    """Records nodes as autograd would build them: each with the values it saves and the
    parameters whose gradients it yields. Rules follow PyTorch's derivatives: an input is saved
    only if the gradient of another input needs it."""

    def __init__(self, tokens: int, compute: str | None):
        self.tokens = tokens
        self.compute = compute  # autocast dtype or None
        self.nodes: list[_Node] = []
        self.cast_cache: dict[int, _Value] = {}

    def value(self, numel: int, dtype: str, rg: bool, kind: str = "activations") -> _Value:
        return _Value(numel * DTYPE_BYTES[dtype], dtype, rg, kind)

    def node(self, label: str, saved: Iterable, params: Iterable = ()) -> None:
        saved = [v for v in saved if v is not None]
        params = [p for p in params if p.trainable]
        if saved or params:
            self.nodes.append(_Node(label, saved, params))

    # -- ops --------------------------------------------------------------------------------
    def _cast_input(self, x: _Value, numel: int) -> _Value:
        if self.compute is None or x.dtype == self.compute:
            return x
        return self.value(numel, self.compute, x.rg)  # a new storage on every call (no cache for activations)

    def _cast_weight(self, w: _Param) -> _Value | None:
        if self.compute is None or w.dtype == self.compute:
            return None  # the parameter itself is saved: a weight, not counted again
        if w.trainable:  # autocast caches casts of leaf parameters that require grad (one per forward)
            key = id(w)
            if key not in self.cast_cache:
                self.cast_cache[key] = self.value(w.numel, self.compute, True, "cast_weights")
            return self.cast_cache[key]
        return self.value(w.numel, self.compute, False, "cast_weights")  # frozen: cast on every call

    def linear(self, x: _Value, w: _Param, out_features: int, label: str, in_features: int) -> _Value:
        xc = self._cast_input(x, self.tokens * in_features)
        wc = self._cast_weight(w)
        dtype = self.compute or w.dtype
        saved = []
        if w.rg:
            saved.append(xc)  # dW = g^T x
        if x.rg:
            saved.append(wc)  # dx = g W  (the parameter itself is not counted; its cast copy is)
        self.node(label, saved, [w])
        return self.value(self.tokens * out_features, dtype, x.rg or w.rg)

    def lora_linear(self, x: _Value, w: _Param, a: _Param, b: _Param, out_features: int, in_features: int,
                    rank: int, label: str) -> _Value:
        """efftrain_lib.lora.LoRALinear: base(x), h = linear(x, A) * s, addmm(base_out, h, B^T)."""
        out = self.linear(x, w, out_features, label + ".base", in_features)
        h = self.linear(x, a, rank, label + ".lora_A", in_features)
        # addmm(out, h, B.t()): under autocast B.t() is a view, so its cast is not cached and
        # is an ordinary activation (its grad_fn does not lead straight to the parameter).
        bt = None
        if self.compute is not None and b.dtype != self.compute:
            bt = self.value(b.numel, self.compute, True)
        saved = [h] if b.rg else []
        if h.rg:
            saved.append(bt)
        self.node(label + ".lora_B", saved, [b])
        return self.value(self.tokens * out_features, self.compute or w.dtype, out.rg or h.rg or b.rg)

    def mul(self, a: _Value, b, label: str, out_dtype: str | None = None) -> _Value:
        """a * b where b is a _Value or a _Param (broadcast weight)."""
        saved = []
        if b.rg:
            saved.append(a)
        if a.rg and isinstance(b, _Value):
            saved.append(b)
        params = [b] if isinstance(b, _Param) else []
        self.node(label, saved, params)
        return self.value(a.nbytes // DTYPE_BYTES[a.dtype], out_dtype or a.dtype, a.rg or b.rg)

    def rmsnorm(self, x: _Value, w: _Param, hidden: int, label: str) -> _Value:
        """models.RMSNorm / HF LlamaRMSNorm: x32 = x.float(); x32 * rsqrt(mean(x32^2) + eps), back to
        x's dtype, times the weight."""
        n = self.tokens * hidden
        # models.RMSNorm calls x.float() twice (for the variance, then to normalise): for a 16-bit
        # stream those are two fp32 copies, each saved. (HF's LlamaRMSNorm casts once: one copy.)
        x32a = x if x.dtype == "fp32" else self.value(n, "fp32", x.rg)
        x32b = x if x.dtype == "fp32" else self.value(n, "fp32", x.rg)
        rs = self.value(self.tokens, "fp32", x.rg)
        if x.rg:
            self.node(label + ".pow", [x32a])
            self.node(label + ".rsqrt", [rs])
            self.node(label + ".normalize", [x32b, rs])
        xn = self.value(n, "fp32", x.rg)
        xn = xn if x.dtype == "fp32" else self.value(n, x.dtype, x.rg)  # .to(input dtype)
        return self.mul(xn, w, label + ".weight")

    def attention(self, q: _Value, k: _Value, v: _Value, shape: TransformerShape, batch: int, seq: int,
                  impl: str, label: str) -> _Value:
        dtype = q.dtype
        rg = q.rg or k.rg or v.rg
        h = shape.hidden_size
        if shape.kv_heads != shape.n_heads:  # HF repeat_kv: k, v expanded to all heads (new storages)
            k = self.value(self.tokens * h, dtype, k.rg)
            v = self.value(self.tokens * h, dtype, v.rg)
        out = self.value(self.tokens * h, dtype, rg)
        if not rg:
            return out
        if impl == "flash":  # SDPA flash / memory-efficient: q, k, v, out and the fp32 logsumexp
            lse = self.value(batch * shape.n_heads * seq, "fp32", False)
            self.node(label, [q, k, v, out, lse])
        else:  # eager: softmax(q k^T) kept in fp32 (HF upcasts) and its cast for probs @ v
            scores = batch * shape.n_heads * seq * seq
            probs32 = self.value(scores, "fp32", rg)
            probs = probs32 if dtype == "fp32" else self.value(scores, dtype, rg)
            self.node(label + ".qk", [q, k])
            self.node(label + ".softmax", [probs32])
            self.node(label + ".pv", [probs, v])
        return out


# ----------------------------------------------------------------------------------------------
# Building the tape for a whole model
# ----------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    shape: TransformerShape
    micro_batch: int
    seq: int
    param_dtype: str
    compute: str | None
    lora_rank: int | None
    lora_targets: tuple
    checkpointed: frozenset
    attention: str


def _make_params(plan: _Plan) -> tuple[dict, list]:
    """Parameters by name (dict) and the ordered list of all of them."""
    s, dt = plan.shape, plan.param_dtype
    full = plan.lora_rank is None
    params: dict[str, _Param] = {}

    def add(name, numel):
        params[name] = _Param(name, numel, dt, full)

    add("embed_tokens", s.vocab_size * s.hidden_size)
    if s.positions == "learned":
        add("embed_positions", s.max_seq_len * s.hidden_size)
    for i in range(s.n_layers):
        add(f"layers.{i}.input_layernorm", s.hidden_size)
        add(f"layers.{i}.post_attention_layernorm", s.hidden_size)
        for lin, (o, n_in) in s.linear_shapes().items():
            add(f"layers.{i}.{lin}", o * n_in)
            if not full and lin in plan.lora_targets:
                params[f"layers.{i}.{lin}.lora_A"] = _Param(f"layers.{i}.{lin}.lora_A", plan.lora_rank * n_in, dt, True)
                params[f"layers.{i}.{lin}.lora_B"] = _Param(f"layers.{i}.{lin}.lora_B", o * plan.lora_rank, dt, True)
    add("norm", s.hidden_size)
    if not s.tied_embeddings:
        add("lm_head", s.vocab_size * s.hidden_size)
        if not full and "lm_head" in plan.lora_targets:
            params["lm_head.lora_A"] = _Param("lm_head.lora_A", plan.lora_rank * s.hidden_size, dt, True)
            params["lm_head.lora_B"] = _Param("lm_head.lora_B", s.vocab_size * plan.lora_rank, dt, True)
    return params, list(params.values())


def _decoder_layer(t: _Tape, plan: _Plan, p: dict, i: int, x: _Value, batch: int) -> _Value:
    s = plan.shape
    h = s.hidden_size
    pre = f"layers.{i}"

    def lin(name, inp):
        o, n_in = s.linear_shapes()[name]
        key = f"{pre}.{name}"
        if key + ".lora_A" in p:
            return t.lora_linear(inp, p[key], p[key + ".lora_A"], p[key + ".lora_B"], o, n_in, plan.lora_rank, key)
        return t.linear(inp, p[key], o, key, n_in)

    normed = t.rmsnorm(x, p[f"{pre}.input_layernorm"], h, f"{pre}.input_layernorm")
    q, k, v = lin("q_proj", normed), lin("k_proj", normed), lin("v_proj", normed)
    attn = t.attention(q, k, v, s, batch, plan.seq, plan.attention, f"{pre}.attention")
    o = lin("o_proj", attn)
    x = t.value(t.tokens * h, x.dtype, x.rg or o.rg)  # residual add (promotes to the stream's dtype)
    normed = t.rmsnorm(x, p[f"{pre}.post_attention_layernorm"], h, f"{pre}.post_attention_layernorm")
    gate, up = lin("gate_proj", normed), lin("up_proj", normed)
    if gate.rg:
        t.node(f"{pre}.silu", [gate])
    act = t.value(gate.nbytes // DTYPE_BYTES[gate.dtype], gate.dtype, gate.rg)
    prod = t.mul(act, up, f"{pre}.swiglu_mul")
    down = lin("down_proj", prod)
    return t.value(t.tokens * h, x.dtype, x.rg or down.rg)


def _build_tape(plan: _Plan) -> tuple[_Tape, list]:
    s = plan.shape
    b, seq = plan.micro_batch, plan.seq
    t = _Tape(b * seq, plan.compute)
    p, all_params = _make_params(plan)
    ids = t.value(b * seq, "int64", False)
    # embeddings: the lookup saves the indices (for the weight's gradient) if the table trains
    t.node("embed_tokens", [ids] if p["embed_tokens"].trainable else [], [p["embed_tokens"]])
    rg = p["embed_tokens"].trainable
    if s.positions == "learned":
        positions = t.value(seq, "int64", False)
        t.node("embed_positions", [positions] if p["embed_positions"].trainable else [], [p["embed_positions"]])
        rg = rg or p["embed_positions"].trainable
    x = t.value(t.tokens * s.hidden_size, plan.param_dtype, rg)
    for i in range(s.n_layers):
        if i in plan.checkpointed:
            if not x.rg:  # HF's enable_input_require_grads: reentrant checkpointing needs an input requiring grad
                x = _Value(x.nbytes, x.dtype, True)
            outer = t.nodes
            t.nodes = []
            t.cast_cache = {}
            y = _decoder_layer(t, plan, p, i, x, b)
            segment, t.nodes = t.nodes, outer
            t.nodes.append(_Node(f"layers.{i} (checkpoint)", [x], [], segment))
            x = y
        else:
            x = _decoder_layer(t, plan, p, i, x, b)
    t.cast_cache = {}
    normed = t.rmsnorm(x, p["norm"], s.hidden_size, "norm")
    head = p["embed_tokens"] if s.tied_embeddings else p["lm_head"]
    if "lm_head.lora_A" in p:
        logits = t.lora_linear(normed, head, p["lm_head.lora_A"], p["lm_head.lora_B"], s.vocab_size,
                               s.hidden_size, plan.lora_rank, "lm_head")
    else:
        logits = t.linear(normed, head, s.vocab_size, "lm_head", s.hidden_size)
    # language_model_loss: cross_entropy(logits.float()) = log_softmax (saves its fp32 output, which
    # nll_loss saves too) + nll_loss (saves the targets and a 4-byte total_weight)
    if logits.rg:
        logp = t.value(t.tokens * s.vocab_size, "fp32", True)
        targets = t.value(b * seq, "int64", False)
        t.node("log_softmax", [logp])
        t.node("nll_loss", [logp, targets, t.value(1, "fp32", False)])
    return t, all_params


# ----------------------------------------------------------------------------------------------
# Replaying a step: forward builds up, backward releases while gradients appear
# ----------------------------------------------------------------------------------------------


class _Replay:
    def __init__(self, base: dict, grad_bytes: dict, grads_alive: bool):
        self.base = base  # weights, optimizer_state: constant through the step
        self.refs: dict[int, int] = {}
        self.values: dict[int, _Value] = {}
        self.live = {"activations": 0, "cast_weights": 0}
        self.grad_bytes = grad_bytes  # per parameter id
        self.grads: set[int] = set(grad_bytes) if grads_alive else set()
        self.gradients = sum(grad_bytes.values()) if grads_alive else 0
        self.best = -1
        self.best_state: dict = {}
        self.max_cat = {"activations": 0, "cast_weights": 0}

    def _observe(self, phase: str) -> None:
        total = self.base["weights"] + self.base["optimizer_state"] + self.gradients + sum(self.live.values())
        for k in self.max_cat:
            self.max_cat[k] = max(self.max_cat[k], self.live[k])
        if total > self.best:
            self.best = total
            self.best_state = {**self.base, "gradients": self.gradients, **self.live, "phase": phase}

    def save(self, node: _Node, phase: str) -> None:
        for v in node.saved:
            key = id(v)
            if self.refs.get(key, 0) == 0:
                self.values[key] = v
                self.live[v.kind] += v.nbytes
            self.refs[key] = self.refs.get(key, 0) + 1
        self._observe(phase)

    def release(self, node: _Node, phase: str) -> None:
        for v in node.saved:
            key = id(v)
            self.refs[key] -= 1
            if self.refs[key] == 0:
                self.live[v.kind] -= v.nbytes
        self._observe(phase)  # (only decreases; kept for the phase label of equal totals)
        for prm in node.params:
            if id(prm) not in self.grads:
                self.grads.add(id(prm))
                self.gradients += self.grad_bytes[id(prm)]
                self._observe(phase)

    def forward(self, nodes: list[_Node]) -> None:
        for node in nodes:
            self.save(node, "end of forward")

    def backward(self, nodes: list[_Node]) -> None:
        for node in reversed(nodes):
            phase = f"backward: {_phase_name(node.label)}"
            if node.segment is not None:
                for inner in node.segment:  # recompute the layer (its activations come back)
                    self.save(inner, f"backward: recomputing {node.label.split(' ')[0]}")
                self.backward(node.segment)
                self.release(node, phase)
            else:
                self.release(node, phase)


def _phase_name(label: str) -> str:
    parts = label.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" else parts[0]


# ----------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------


def _check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
    return value.lower()


def _checkpointed_layers(checkpointing, n_layers: int) -> frozenset:
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
        o, i = shapes[x]
        if rank > min(o, i):
            raise ValueError(f"LoRA rank {rank} is larger than layer {x} ({o} x {i}) allows "
                             f"(at most min(out, in) = {min(o, i)})")
    return targets


def _lora_from_model(model) -> tuple[int, tuple] | None:
    try:
        from efftrain_lib.lora import lora_layers
    except ImportError:  # pragma: no cover
        return None
    from torch import nn

    if not isinstance(model, nn.Module):
        return None
    layers = lora_layers(model)
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
    """
    shape = shape_of(model)
    batch_size = _positive_int("batch_size", batch_size)
    seq = shape.max_seq_len if seq_len is None else _positive_int("seq_len", seq_len)
    if shape.positions == "learned" and seq > shape.max_seq_len:
        raise ValueError(f"seq_len {seq} exceeds the model's learned positions ({shape.max_seq_len})")
    precision = _check_choice("precision", precision, PRECISIONS)
    optimizer = _check_choice("optimizer", optimizer, OPTIMIZERS)
    attention = _check_choice("attention", attention, ATTENTION_IMPLS)
    micro = batch_size if micro_batch_size is None else _positive_int("micro_batch_size", micro_batch_size)
    if micro > batch_size or batch_size % micro:
        raise ValueError(f"micro_batch_size ({micro}) must divide batch_size ({batch_size})")
    if lora_rank is None and not isinstance(model, (str, TransformerShape)):
        found = _lora_from_model(model)
        if found is not None:
            lora_rank, lora_targets = found
    targets: tuple = ()
    if lora_rank is not None:
        lora_rank = _positive_int("lora_rank", lora_rank)
        targets = _lora_targets(lora_targets, shape, lora_rank)
    param_dtype, compute, master = PRECISIONS[precision]
    plan = _Plan(shape, micro, seq, param_dtype, compute, lora_rank, targets,
                 _checkpointed_layers(checkpointing, shape.n_layers), attention)
    tape, params = _build_tape(plan)

    total_params = sum(p.numel for p in params)
    trainable = [p for p in params if p.trainable]
    n_trainable = sum(p.numel for p in trainable)
    elem = DTYPE_BYTES[param_dtype]
    weights = total_params * elem
    n_states, step_scalars = OPTIMIZERS[optimizer]
    state_elem = 4 if master else elem  # a master-weight optimizer keeps its fp32 copy and m, v in fp32
    optimizer_state = (n_trainable * (n_states * state_elem + (4 if master else 0))
                       + (4 * len(trainable) if step_scalars else 0))
    grad_bytes = {id(p): p.numel * elem for p in trainable}

    base = {"weights": weights, "optimizer_state": optimizer_state}
    steps = batch_size // micro
    replays = []
    for grads_alive in ([False, True] if steps > 1 else [False]):
        r = _Replay(base, grad_bytes, grads_alive)
        r._observe("start of step")
        r.forward(tape.nodes)
        r.backward(tape.nodes)
        replays.append(r)
    best = max(replays, key=lambda r: r.best)
    state = best.best_state
    all_at_once = {"weights": weights, "gradients": sum(grad_bytes.values()), "optimizer_state": optimizer_state,
                   "activations": max(r.max_cat["activations"] for r in replays),
                   "cast_weights": max(r.max_cat["cast_weights"] for r in replays)}
    phase = state["phase"]
    if steps > 1 and best is replays[-1]:
        phase += " (a later micro-batch: all gradients already allocated)"
    return MemoryEstimate(
        weights=state["weights"], gradients=state["gradients"], optimizer_state=state["optimizer_state"],
        activations=state["activations"], cast_weights=state["cast_weights"], peak_phase=phase,
        all_at_once=all_at_once, workspace=_workspace(plan), total_params=total_params,
        trainable_params=n_trainable,
        settings={"model": shape.name, "batch_size": batch_size, "seq_len": seq, "precision": precision,
                  "optimizer": optimizer, "lora_rank": lora_rank, "lora_targets": targets,
                  "checkpointed_layers": len(plan.checkpointed), "micro_batch_size": micro,
                  "accumulation_steps": steps, "attention": attention},
    )


def _workspace(plan: _Plan) -> int:
    """An allowance for what accounting does not see: the logits and their gradient, in fp32.
    On the tiny transformer this closes the gap to the CPU allocator's peak (torch.profiler) to a
    few percent; on a GPU, kernels' workspaces and the caching allocator's rounding come on top."""
    s = plan.shape
    return 2 * plan.micro_batch * plan.seq * s.vocab_size * 4


# ----------------------------------------------------------------------------------------------
# Model-state arithmetic (the bytes-per-parameter figures) and accelerate's count
# ----------------------------------------------------------------------------------------------


def bytes_per_parameter(precision: str = "fp32", optimizer: str = "adam") -> dict:
    """Model-state bytes per trainable parameter under a policy: weights, grads, optimizer (with master copy).

    fp32 + Adam = 4 + 4 + 8 = 16. bf16 autocast + Adam = 4 + 4 + 8 = 16 plus 2 for the bf16 weight
    copies that live during forward/backward = 18 (Hugging Face's figure). fp16_master + Adam =
    2 + 2 + (4 + 8) = 16 (EleutherAI's figure).
    """
    precision = _check_choice("precision", precision, PRECISIONS)
    optimizer = _check_choice("optimizer", optimizer, OPTIMIZERS)
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
    _positive_int("num_params", num_params)
    for name, value in (("weight_bytes", weight_bytes), ("grad_bytes", grad_bytes)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number of bytes per element, got {value!r}")
    optimizer = _check_choice("optimizer", optimizer, OPTIMIZERS)
    per_param = weight_bytes + grad_bytes + 4 * OPTIMIZERS[optimizer][0] + (4 if master_weights else 0)
    return int(num_params * per_param)


def lora_trainable_params(shapes, rank) -> int:
    """Trainable parameters of a rank-`rank` LoRA on layers of (out_features, in_features) shapes
    (Exercise 0.2's API, hardened): sum of (out + in) * rank; rank <= min(out, in) for every layer."""
    _positive_int("rank", rank)
    total = 0
    for shape in shapes:
        if len(shape) != 2:
            raise ValueError(f"each shape must be (out_features, in_features), got {shape!r}")
        out_features, in_features = (_positive_int("layer size", d) for d in shape)
        if rank > min(out_features, in_features):
            raise ValueError(f"LoRA rank {rank} is larger than layer {out_features} x {in_features} allows "
                             f"(at most min(out, in) = {min(out_features, in_features)})")
        total += (out_features + in_features) * rank
    return total


RECOMPUTE = ("none", "selective", "full")


def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none") -> int:
    """Korthikanti et al. 2022's activation bytes for a GPT-style transformer (16-bit, no tensor
    parallelism): per layer sbh(34 + 5as/h), 34sbh with selective, 2sbh with full recomputation."""
    s, b, h, a, n = (_positive_int(name, v) for name, v in (("seq_len", seq_len), ("batch_size", batch_size),
                     ("hidden_size", hidden_size), ("n_heads", n_heads), ("n_layers", n_layers)))
    recompute = _check_choice("recompute", recompute, RECOMPUTE)
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


# ----------------------------------------------------------------------------------------------
# Measuring the same configurations (the validation harness)
# ----------------------------------------------------------------------------------------------


def _checkpointed(layer):
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    class CheckpointedLayer(nn.Module):
        """torch.utils.checkpoint around one decoder layer. Reentrant, so the meter sees the
        recomputation (it happens under the meter's saved-tensor hooks); an input that does not
        require grad (frozen embeddings under LoRA) is made to, as HF's enable_input_require_grads does."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            return checkpoint(self.inner, x, use_reentrant=True)

    return CheckpointedLayer(layer)


def _training_setup(config, *, batch_size, seq_len, precision, optimizer, lora_rank, lora_targets, checkpointing,
                    micro_batch_size, seed):
    """The tiny transformer, its optimizer and a function running one accumulation window."""
    import torch

    from efftrain_lib.devices import get_device
    from efftrain_lib.lora import apply_lora
    from efftrain_lib.models import TinyTransformer, language_model_loss

    precision = _check_choice("precision", precision, PRECISIONS)
    optimizer = _check_choice("optimizer", optimizer, OPTIMIZERS)
    _positive_int("batch_size", batch_size)
    _positive_int("seq_len", seq_len)
    if precision == "fp16_master":
        raise ValueError("fp16_master (a separate fp32 master copy) has no plain-torch counterpart to measure")
    micro = batch_size if micro_batch_size is None else _positive_int("micro_batch_size", micro_batch_size)
    if micro > batch_size or batch_size % micro:
        raise ValueError(f"micro_batch_size ({micro}) must divide batch_size ({batch_size})")
    device = get_device()
    if precision == "fp16_autocast" and device.type == "cpu":
        raise ValueError("fp16_autocast is measured on CUDA only (fp16 matmuls on a CPU are ~50x slower)")
    param_dtype, compute, _ = PRECISIONS[precision]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyTransformer(config)
    if lora_rank is not None:
        # the estimator's meaning of targets: layer names ("q_proj"), or "all-linear" (never a regex)
        if lora_targets == "all-linear":
            targets = list(LINEAR_NAMES)
        else:
            targets = [lora_targets] if isinstance(lora_targets, str) else list(lora_targets)
        apply_lora(model, targets, lora_rank, 2.0 * lora_rank)
    for i in _checkpointed_layers(checkpointing, config.n_layers):
        model.layers[i] = _checkpointed(model.layers[i])
    model.to(device=device, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[param_dtype])
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer in ("adam", "adamw"):
        opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)(trainable, lr=1e-4)
    else:
        opt = torch.optim.SGD(trainable, lr=1e-3, momentum=0.9 if optimizer == "sgd_momentum" else 0.0)
    steps = batch_size // micro
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute)

    def window(meter=None):
        mark = meter.mark if meter is not None else (lambda label: None)
        for _ in range(steps):
            x = torch.randint(0, config.vocab_size, (micro, seq_len), generator=generator).to(device)
            y = torch.randint(0, config.vocab_size, (micro, seq_len), generator=generator).to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = language_model_loss(model(x), y) / steps
            mark("forward")
            loss.backward()
            del loss
            mark("backward")
        opt.step()
        mark("optimizer step")
        opt.zero_grad(set_to_none=True)

    model.train()
    window()  # warm-up: the optimizer allocates its state on its first step
    return model, opt, window, device


def measure_training_step(config, *, batch_size: int, seq_len: int, precision: str = "fp32",
                          optimizer: str = "adam", lora_rank: int | None = None,
                          lora_targets: str | Sequence[str] = ("q_proj", "v_proj"), checkpointing=False,
                          micro_batch_size: int | None = None, seed: int = 0):
    """Build the tiny transformer with `config` (a TinyConfig), train one warm-up step, then record the
    next one with MemoryMeter (CPU accounting on CPU; the CUDA allocator on a GPU). Returns the meter's
    StepRecord: `.peak` (a MemoryBreakdown) and `.timeline()` (memory within the step, for liveplot).

    Same arguments as estimate_training_memory; precision fp32, bf16_autocast, bf16, or fp16_autocast
    (CUDA only). The whole accumulation window (micro-batches and the optimizer step) is one metered
    step. Checkpointing wraps each chosen decoder layer in torch.utils.checkpoint (reentrant, so the
    meter sees the recomputation).
    """
    from efftrain_lib.meter import MemoryMeter

    model, opt, window, device = _training_setup(
        config, batch_size=batch_size, seq_len=seq_len, precision=precision, optimizer=optimizer,
        lora_rank=lora_rank, lora_targets=lora_targets, checkpointing=checkpointing,
        micro_batch_size=micro_batch_size, seed=seed)
    meter = MemoryMeter(device)
    with meter.step(model, opt):
        window(meter)
    return meter.records[-1]


def measure_training_memory(config, **settings) -> MemoryBreakdown:
    """The measured peak of measure_training_step(config, **settings), by category."""
    return measure_training_step(config, **settings).peak


def measure_allocator_peak(config, **settings) -> int:
    """The CPU allocator's figure for the same step: weights and optimizer state (resident before the
    step) plus torch.profiler's peak above that level, temporaries included. CPU only; slow (profiler)."""
    from efftrain_lib.meter import optimizer_state_bytes, parameter_bytes, profiler_peak_bytes

    model, opt, window, device = _training_setup(config, **{"seed": 0, "precision": "fp32", "optimizer": "adam",
                                                            "lora_rank": None, "lora_targets": ("q_proj", "v_proj"),
                                                            "checkpointing": False, "micro_batch_size": None,
                                                            **settings})
    if device.type != "cpu":
        raise ValueError("measure_allocator_peak reads the CPU allocator; on CUDA use measure_training_memory")
    resident = parameter_bytes(model) + optimizer_state_bytes(opt)
    return resident + profiler_peak_bytes(window).peak_bytes


def validation_grid() -> list[tuple[object, dict]]:
    """The configurations the estimator is validated on: (TinyConfig, settings) pairs covering fp32 /
    bf16 autocast / pure bf16, Adam / SGD / SGD with momentum, LoRA on and off (q,v and all linear
    layers), checkpointing of every / some layers, gradient accumulation, and batch and sequence sizes,
    on two model shapes. Small enough to measure in a few seconds on 2 CPU cores."""
    from efftrain_lib.models import TinyConfig

    base = TinyConfig(vocab_size=96, dim=64, n_layers=4, n_heads=4, ffn_dim=172, max_seq_len=64)
    other = TinyConfig(vocab_size=128, dim=48, n_layers=3, n_heads=3, ffn_dim=128, max_seq_len=32)
    grid = []
    for precision in ("fp32", "bf16_autocast"):
        for optimizer in ("adam", "sgd", "sgd_momentum"):
            for lora_rank in (None, 4):
                for checkpointing in (False, True):
                    grid.append((base, dict(batch_size=4, seq_len=64, precision=precision, optimizer=optimizer,
                                            lora_rank=lora_rank, checkpointing=checkpointing)))
    grid += [
        (base, dict(batch_size=1, seq_len=16, precision="fp32", optimizer="adam")),
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
        (other, dict(batch_size=8, seq_len=32, precision="fp32", optimizer="adam")),
        (other, dict(batch_size=8, seq_len=32, precision="bf16_autocast", optimizer="sgd", lora_rank=4,
                     micro_batch_size=2)),
        (other, dict(batch_size=2, seq_len=8, precision="bf16_autocast", optimizer="adam", checkpointing=True)),
    ]
    return grid


def describe_settings(settings: dict) -> str:
    """A short label for a grid row: 'bf16_autocast adam lora4 ckpt b4 s64'."""
    parts = [settings.get("precision", "fp32"), settings.get("optimizer", "adam")]
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
    return " ".join(parts)


def relative_error(predicted: int, measured: int) -> float:
    """(predicted - measured) / measured."""
    if measured <= 0:
        raise ValueError(f"measured bytes must be positive, got {measured}")
    return (predicted - measured) / measured


__all__ = [
    "PRESETS", "PRECISIONS", "OPTIMIZERS", "TransformerShape", "MemoryEstimate", "shape_of",
    "estimate_training_memory", "bytes_per_parameter", "accelerate_estimate", "measure_training_memory",
    "measure_training_step",
    "measure_allocator_peak", "validation_grid", "describe_settings", "training_memory_bytes",
    "lora_trainable_params", "activation_bytes",
    "relative_error",
]

"""The estimator's engine: a training step replayed symbolically, tensor by tensor, without running it.

`efftrain_lib.memory.estimate_training_memory` describes a step (`StepPlan`), and this module replays it:

* `build_tape(plan)` walks a LLaMA-style decoder's forward op by op and records, per autograd node, the
  tensors it saves for backward and the parameters whose gradients it yields, by the rule autograd
  itself follows: an op saves an input only if the gradient of *another* input needs it (a frozen
  Linear keeps its weight, not its input); storages count once; autocast's casts are new storages
  (a Linear casts its input on every call; trainable weights are cast once per forward and cached).
* `Replay` plays the tape forward (saved tensors pile up) and backward (each node's saved tensors are
  freed as it runs, while gradients appear; checkpointed layers are recomputed first), and keeps the
  largest moment with its breakdown.

Nothing is run: a 70B model costs the same microseconds as a tiny one. The shapes (`TransformerShape`)
and the policy tables live in efftrain_lib.memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from efftrain_lib.memory import TransformerShape

#: bytes per element
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int64": 8}


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
    quantized: bool = False  # a frozen base stored block-wise (QLoRA): dequantized inside one op

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
        if w.quantized:  # efftrain_lib.qlora dequantizes in the op and again in backward: saves only codes
            return None
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
class StepPlan:
    shape: TransformerShape
    micro_batch: int
    seq: int
    param_dtype: str
    compute: str | None
    lora_rank: int | None
    lora_targets: tuple
    checkpointed: frozenset
    attention: str
    quantized_base: bool = False  # the decoder's frozen Linears stored block-wise (QLoRA)


def _make_params(plan: StepPlan) -> tuple[dict, list]:
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
            params[f"layers.{i}.{lin}"].quantized = plan.quantized_base
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


def _decoder_layer(t: _Tape, plan: StepPlan, p: dict, i: int, x: _Value, batch: int) -> _Value:
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


def build_tape(plan: StepPlan) -> tuple[_Tape, list]:
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


class Replay:
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

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

#: torch.get_rng_state(): the CPU generator's state, which checkpoint stashes per checkpointed call
#: (preserve_rng_state=True) so that dropout draws the same mask on recompute. Not a saved tensor, so
#: accounting does not see it; the allocator does.
CPU_RNG_STATE_BYTES = 5056


# ----------------------------------------------------------------------------------------------
# The symbolic forward: which tensors autograd saves
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Value:
    nbytes: int
    dtype: str
    rg: bool  # requires grad
    kind: str = "activations"  # or "cast_weights"
    batch: bool = False  # the window's input ids or labels: resident for the whole step anyway


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
    # Bytes alive only while this node's backward runs, which accounting never sees: the gradient of
    # its output, the gradients it computes for its inputs, a cast weight's 16-bit gradient, and a
    # residual branch's skip gradient waiting in the engine. The allocator sees them.
    transient: int = 0
    recompute_extra: int = 0  # a checkpointed segment: its recomputed output, alive through its backward


class _Tape:
    """Records nodes as autograd would build them: each with the values it saves and the
    parameters whose gradients it yields. Rules follow PyTorch's derivatives: an input is saved
    only if the gradient of another input needs it."""

    def __init__(self, tokens: int, compute: str | None):
        self.tokens = tokens
        self.compute = compute  # autocast dtype or None
        self.nodes: list[_Node] = []
        self.cast_cache: dict[int, _Value] = {}
        self.rng_states = 0  # checkpointed segments, each holding the RNG state from forward to backward's end

    def value(self, numel: int, dtype: str, rg: bool, kind: str = "activations") -> _Value:
        return _Value(numel * DTYPE_BYTES[dtype], dtype, rg, kind)

    def node(self, label: str, saved: Iterable, params: Iterable = (), transient: int = 0) -> None:
        saved = [v for v in saved if v is not None]
        params = [p for p in params if p.trainable]
        if saved or params or transient:
            self.nodes.append(_Node(label, saved, params, transient=transient))

    def grad_bytes(self, *values) -> int:
        """Bytes of the gradients of these values (those that require grad): each is its value's size."""
        return sum(v.nbytes for v in values if v is not None and v.rg)

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
        out = self.value(self.tokens * out_features, dtype, x.rg or w.rg)
        # backward: g (out's size), dx (the cast input's size), and under autocast dW first in 16 bits;
        # a quantized base is dequantized again, in the input's dtype, for dx = g W
        cast_grad = w.numel * DTYPE_BYTES[self.compute] if w.trainable and wc is not None else 0
        dequantized = w.numel * DTYPE_BYTES[xc.dtype] if w.quantized and x.rg else 0
        self.node(label, saved, [w], self.grad_bytes(out, xc) + cast_grad + dequantized)
        return out

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
        fused = self.value(self.tokens * out_features, self.compute or w.dtype, out.rg or h.rg or b.rg)
        self.node(label + ".lora_B", saved, [b], self.grad_bytes(fused, h, bt))
        return fused

    def mul(self, a: _Value, b, label: str, out_dtype: str | None = None) -> _Value:
        """a * b where b is a _Value or a _Param (broadcast weight)."""
        saved = []
        if b.rg:
            saved.append(a)
        if a.rg and isinstance(b, _Value):
            saved.append(b)
        params = [b] if isinstance(b, _Param) else []
        out = self.value(a.nbytes // DTYPE_BYTES[a.dtype], out_dtype or a.dtype, a.rg or b.rg)
        self.node(label, saved, params, self.grad_bytes(out, a, b if isinstance(b, _Value) else None))
        return out

    def rmsnorm(self, x: _Value, w: _Param, hidden: int, label: str) -> _Value:
        """models.RMSNorm / HF LlamaRMSNorm: x32 = x.float(); x32 * rsqrt(mean(x32^2) + eps), back to
        x's dtype, times the weight."""
        n = self.tokens * hidden
        # models.RMSNorm calls x.float() twice (for the variance, then to normalise): for a 16-bit
        # stream those are two fp32 copies, each saved. (HF's LlamaRMSNorm casts once: one copy.)
        x32a = x if x.dtype == "fp32" else self.value(n, "fp32", x.rg)
        x32b = x if x.dtype == "fp32" else self.value(n, "fp32", x.rg)
        rs = self.value(self.tokens, "fp32", x.rg)
        if x.rg:  # backward in fp32: the gradient arriving, and the two of the input's fp32 copies
            self.node(label + ".pow", [x32a], transient=2 * n * 4)
            self.node(label + ".rsqrt", [rs])
            self.node(label + ".normalize", [x32b, rs], transient=3 * n * 4)
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
            self.node(label, [q, k, v, out, lse], transient=self.grad_bytes(out, q, k, v))
        else:  # eager: softmax(q k^T) kept in fp32 (HF upcasts) and its cast for probs @ v
            scores = batch * shape.n_heads * seq * seq
            probs32 = self.value(scores, "fp32", rg)
            probs = probs32 if dtype == "fp32" else self.value(scores, dtype, rg)
            self.node(label + ".qk", [q, k], transient=scores * 4 + self.grad_bytes(q, k))
            self.node(label + ".softmax", [probs32], transient=2 * probs32.nbytes)
            self.node(label + ".pv", [probs, v], transient=self.grad_bytes(out, probs, v))
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
    for i in range(s.n_layers):  # in the tiny model's parameter order (the optimizer's for-loop follows it)
        for lin, (o, n_in) in s.linear_shapes().items():
            if lin in ("q_proj", "gate_proj"):
                add(f"layers.{i}.{'input' if lin == 'q_proj' else 'post_attention'}_layernorm", s.hidden_size)
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

    branch = len(t.nodes)
    normed = t.rmsnorm(x, p[f"{pre}.input_layernorm"], h, f"{pre}.input_layernorm")
    q, k, v = lin("q_proj", normed), lin("k_proj", normed), lin("v_proj", normed)
    attn = t.attention(q, k, v, s, batch, plan.seq, plan.attention, f"{pre}.attention")
    o = lin("o_proj", attn)
    _skip_gradient_waits(t, branch, x)
    x = t.value(t.tokens * h, x.dtype, x.rg or o.rg)  # residual add (promotes to the stream's dtype)
    branch = len(t.nodes)
    normed = t.rmsnorm(x, p[f"{pre}.post_attention_layernorm"], h, f"{pre}.post_attention_layernorm")
    gate, up = lin("gate_proj", normed), lin("up_proj", normed)
    if gate.rg:
        t.node(f"{pre}.silu", [gate], transient=2 * gate.nbytes)
    act = t.value(gate.nbytes // DTYPE_BYTES[gate.dtype], gate.dtype, gate.rg)
    prod = t.mul(act, up, f"{pre}.swiglu_mul")
    down = lin("down_proj", prod)
    _skip_gradient_waits(t, branch, x)
    return t.value(t.tokens * h, x.dtype, x.rg or down.rg)


def _skip_gradient_waits(t: _Tape, first: int, stream: _Value) -> None:
    """x + branch(x): while the branch's backward runs, the skip connection's gradient (the residual
    stream's size) waits in the engine to be summed with the branch's."""
    if stream.rg:
        for node in t.nodes[first:]:
            node.transient += stream.nbytes


def build_tape(plan: StepPlan) -> tuple[_Tape, list]:
    s = plan.shape
    b, seq = plan.micro_batch, plan.seq
    t = _Tape(b * seq, plan.compute)
    p, all_params = _make_params(plan)
    ids = _Value(b * seq * DTYPE_BYTES["int64"], "int64", False, batch=True)
    stream_grad = b * seq * s.hidden_size * DTYPE_BYTES[plan.param_dtype]
    # embeddings: the lookup saves the indices (for the weight's gradient) if the table trains
    t.node("embed_tokens", [ids] if p["embed_tokens"].trainable else [], [p["embed_tokens"]], stream_grad)
    rg = p["embed_tokens"].trainable
    if s.positions == "learned":
        positions = t.value(seq, "int64", False)
        t.node("embed_positions", [positions] if p["embed_positions"].trainable else [], [p["embed_positions"]],
               stream_grad)
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
            # while the layer's backward reruns it, its recomputed output stays alive (the gradient handed in
            # is the same tensor as its last op's output gradient, already in that node's transient)
            t.nodes.append(_Node(f"layers.{i} (checkpoint)", [x], [], segment, recompute_extra=y.nbytes))
            t.rng_states += 1
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
        targets = _Value(b * seq * DTYPE_BYTES["int64"], "int64", False, batch=True)
        # backward: the gradient of the log-probabilities and of the (fp32) logits, both tokens x vocab
        t.node("log_softmax", [logp], transient=2 * logp.nbytes)
        t.node("nll_loss", [logp, targets, t.value(1, "fp32", False)], transient=logp.nbytes)
    return t, all_params


# ----------------------------------------------------------------------------------------------
# Replaying a step: forward builds up, backward releases while gradients appear
# ----------------------------------------------------------------------------------------------


class Replay:
    """Plays a tape forward then backward, keeping two maxima of the step's memory:

    * accounting's (`best`, `best_state`): weights, optimizer state, gradients and the tensors saved
      for backward, exactly what MemoryMeter counts on CPU;
    * the allocator's (`alloc_best`, `alloc_phase`): the same plus what lives only while an op runs
      (each node's `transient`, a checkpointed segment's recomputed output) and the window's input ids
      and labels, which the allocator sees whether or not autograd saved them.
    """

    def __init__(self, base: dict, grad_bytes: dict, grads_alive: bool, batch_bytes: int = 0, rng_bytes: int = 0):
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
        self.batch_bytes = batch_bytes  # every micro-batch's ids and labels, resident for the whole step
        self.saved_batch = 0  # of those, the bytes autograd holds (already in `activations`)
        self.extra = 0  # bytes held around the nodes being replayed (a recomputed segment's output)
        self.rng_bytes = rng_bytes  # one RNG state per checkpointed segment, held until the graph is released
        self.rng_held = 0
        self.alloc_best = -1
        self.alloc_phase = ""

    def _accounted(self) -> int:
        return self.base["weights"] + self.base["optimizer_state"] + self.gradients + sum(self.live.values())

    def _observe(self, phase: str) -> None:
        total = self._accounted()
        for k in self.max_cat:
            self.max_cat[k] = max(self.max_cat[k], self.live[k])
        if total > self.best:
            self.best = total
            self.best_state = {**self.base, "gradients": self.gradients, **self.live, "phase": phase}
        self._observe_allocator(phase, 0)

    def _observe_allocator(self, phase: str, transient: int) -> None:
        total = (self._accounted() + transient + self.extra + self.batch_bytes - self.saved_batch
                 + self.rng_held)
        if total > self.alloc_best:
            self.alloc_best, self.alloc_phase = total, phase

    def save(self, node: _Node, phase: str) -> None:
        if node.segment is not None and phase == "end of forward":
            self.rng_held += self.rng_bytes
        for v in node.saved:
            key = id(v)
            if self.refs.get(key, 0) == 0:
                self.values[key] = v
                self.live[v.kind] += v.nbytes
                self.saved_batch += v.nbytes if v.batch else 0
            self.refs[key] = self.refs.get(key, 0) + 1
        self._observe(phase)

    def release(self, node: _Node, phase: str) -> None:
        # While the node runs: its saved tensors, its gradients in flight, and each parameter gradient it
        # computes (a new .grad, or under accumulation a temporary added into the existing one).
        computed = sum(self.grad_bytes[id(prm)] for prm in node.params)
        self._observe_allocator(phase, node.transient + computed)
        for v in node.saved:
            key = id(v)
            self.refs[key] -= 1
            if self.refs[key] == 0:
                self.live[v.kind] -= v.nbytes
                self.saved_batch -= v.nbytes if v.batch else 0
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
                self.extra += node.recompute_extra
                self.backward(node.segment)
                self.extra -= node.recompute_extra
                self.release(node, phase)  # its RNG state stays: the graph goes only when the loss does
            else:
                self.release(node, phase)

    def optimizer_step(self, temporaries: int, clip_temporaries: int) -> None:
        """After backward: every gradient alive, no activation; clipping, then the step's temporaries."""
        self.rng_held = 0  # the graph (and the RNG states its checkpoints kept) went with the loss
        if clip_temporaries:
            self._observe_allocator("clipping the gradients", clip_temporaries)
        self._observe_allocator("optimizer step", temporaries)


def _phase_name(label: str) -> str:
    parts = label.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" else parts[0]

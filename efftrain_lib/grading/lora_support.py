"""Helpers of the lora grader (efftrain_lib/grading/lora.py): reference implementations, the
small models the checks run, and the diagnoses that name a learner's likely mistake. The checks themselves,
in the order the report shows them, are in the grader module."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from efftrain_lib.grading import failed, passed
from efftrain_lib.grading.combinations import check_together, product

ATOL = 1e-5  # outputs and merged weights vs the reference


EXACT = 1e-6  # "equals the base model"


GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4


# rank 4, alpha 12: alpha/rank = 3 differs from alpha (12), rank/alpha (1/3), alpha/sqrt(rank) (6),
# rank (4) and 1, so a wrong scaling can be named.
IN, OUT, RANK, ALPHA = 12, 7, 4, 12.0


SCALING = ALPHA / RANK


_peft: dict = {}


def prepare() -> None:
    """Import PEFT once (about 3 s), before the per-check timer starts."""
    if not _peft:
        from peft import LoraConfig
        from peft.tuners.lora import Linear as PeftLoraLinear
        from peft.tuners.tuners_utils import check_target_module_exists

        _peft.update(LoraConfig=LoraConfig, Linear=PeftLoraLinear, matches=check_target_module_exists)


def _ref(name: str):
    try:
        prepare()
    except ImportError as exc:
        raise ImportError(f"{exc}: the graders compare against PEFT: pip install 'efftrain-lib[reference]'") from exc
    return _peft[name]


def _t(x) -> torch.Tensor:
    """lora_A / lora_B as a tensor, also if someone stored them as nn.Linear like PEFT does."""
    return x.weight if isinstance(x, nn.Module) else x


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def _base(in_f=IN, out_f=OUT, bias=True) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias=bias)


def _lora(impl, base: nn.Linear, rank=RANK, alpha=ALPHA, dropout=None):
    # Positional arguments; dropout left to its default unless a test needs it.
    if dropout is None:
        return impl.LoRALinear(base, rank, alpha)
    return impl.LoRALinear(base, rank, alpha, dropout)


def _random_AB(in_f=IN, out_f=OUT, rank=RANK):
    A = torch.empty(rank, in_f).uniform_(-1, 1) / math.sqrt(in_f)
    B = torch.randn(out_f, rank) * 0.5
    return A, B


def _set_AB(layer, A, B) -> None:
    with torch.no_grad():
        _t(layer.lora_A).copy_(A)
        _t(layer.lora_B).copy_(B)


def _peft_layer(base: nn.Linear, A, B, rank=RANK, alpha=ALPHA, dropout=0.0, dora=False):
    config = _ref("LoraConfig")(r=rank, lora_alpha=alpha, lora_dropout=dropout, use_dora=dora)
    layer = _ref("Linear")(base, "default", config=config, r=rank, lora_alpha=alpha, lora_dropout=dropout,
                           use_dora=dora)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    return layer


def _pair(impl, in_f=IN, out_f=OUT, dropout=None):
    """The learner's LoRALinear and PEFT's, on copies of one base layer, with one random A, B."""
    base = _base(in_f, out_f)
    ours = _lora(impl, copy.deepcopy(base), dropout=dropout)
    A, B = _random_AB(in_f, out_f)
    _set_AB(ours, A, B)
    ref = _peft_layer(copy.deepcopy(base), A, B)
    return ours, ref, base, A, B


def _scaling_name(value: float, rank=RANK, alpha=ALPHA) -> str | None:
    """Name a wrong scaling factor, if it is a classic one."""
    for name, v in (("alpha", alpha), ("rank / alpha", rank / alpha), ("alpha / sqrt(rank) (rsLoRA)",
                    alpha / math.sqrt(rank)), ("rank", rank), ("1 (no scaling)", 1.0)):
        if math.isclose(value, v, rel_tol=1e-6):
            return name
    return None


def _diagnose_forward(y, base_y, lora_y) -> str:
    """Name the likely forward mistake from the learner's output y."""
    if _maxdiff(y, base_y) <= ATOL:
        return "forward ignores the LoRA branch: add (x @ lora_A.T @ lora_B.T) * scaling to base(x)"
    for name, factor in (("alpha", ALPHA), ("rank / alpha", RANK / ALPHA), ("1 (no scaling)", 1.0),
                         ("alpha / sqrt(rank)", ALPHA / math.sqrt(RANK))):
        if _maxdiff(y, base_y + lora_y * factor) <= ATOL:
            return f"the LoRA branch is multiplied by {name}: the scaling must be alpha / rank"
    return "forward must be base(x) + (dropout(x) @ lora_A.T @ lora_B.T) * scaling"


def _frozen_check(impl, which: str):
    base = _base()
    layer = _lora(impl, base)
    param = getattr(layer.base, which)
    before = param.detach().clone()
    if param.requires_grad:
        return failed(f"base.{which}.requires_grad is True",
                      f"freeze the wrapped layer, {which} included: base.{which}.requires_grad_(False) "
                      "(only lora_A and lora_B train)")
    _set_AB(layer, *_random_AB())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # all of them: frozen ones must not move
    (layer(torch.randn(8, IN)) ** 2).sum().backward()
    opt.step()
    moved = _maxdiff(getattr(layer.base, which), before)
    if moved != 0.0:
        return failed(f"base.{which} moved by up to {moved:.2e} after an optimizer step",
                      f"the base {which} is frozen: it must not change when the LoRA parameters train")
    return passed(f"base.{which} frozen, unchanged after an SGD step")



def _dropout_drops_branch_inputs(impl):
    """Exercise 1.1's dropout check: p = 0.5 in train mode must zero or scale by 1/(1-p) each one-hot input row."""
    p = 0.5
    base = _base()
    layer = _lora(impl, copy.deepcopy(base), dropout=p)
    no_dropout = _lora(impl, copy.deepcopy(base), dropout=0.0)
    A, B = _random_AB()
    _set_AB(layer, A, B)
    _set_AB(no_dropout, A, B)
    # One-hot rows: dropout on x keeps or zeros the row's single entry, so each row's LoRA
    # contribution is either 0 or 1/(1-p) times the clean one. Anything else is the wrong place.
    x = torch.eye(IN).repeat(20, 1) * 1.5
    with torch.no_grad():
        # The learner's own branch without dropout, so a wrong scaling (another check) is not blamed here.
        clean = no_dropout(x) - base(x)
        layer.train()
        delta = layer(x) - base(x)
    zero = (delta.abs().max(dim=1).values <= ATOL)
    kept = ((delta - clean / (1 - p)).abs().max(dim=1).values <= ATOL)
    n = x.shape[0]
    if zero.sum() == 0 and (delta - clean).abs().max() <= ATOL:
        return failed("train mode with dropout=0.5: the LoRA branch is never dropped",
                      "dropout is never applied: keep nn.Dropout(dropout) and apply it to x on the LoRA branch")
    if not bool((zero | kept).all()):
        bad = int((~(zero | kept)).sum())
        return failed(f"{bad}/{n} one-hot rows give a LoRA contribution that is neither 0 nor clean/(1-p)",
                      "dropout must act on the LoRA branch's input x (inverted dropout, as nn.Dropout), "
                      "not on A x, not on the branch's output")
    frac = zero.float().mean().item()
    if not 0.3 <= frac <= 0.7:
        return failed(f"{frac:.0%} of inputs dropped with dropout=0.5",
                      "the dropout probability must be the `dropout` argument")
    return passed(f"{frac:.0%} of one-hot inputs dropped (p=0.5), the rest scaled by 1/(1-p)")


_MERGE_SHAPES = ((8, 8), (IN, OUT))  # square first: there a transposed delta is silent, so name it


def _merge_setup(impl, in_f, out_f):
    ours, ref, base, A, B = _pair(impl, in_f, out_f)
    ours.eval(), ref.eval()
    W0 = ours.base.weight.detach().clone()
    b0 = ours.base.bias.detach().clone()
    return ours, ref, A, B, W0, b0


def _diagnose_merge(W, W0, A, B, scaling) -> str:
    """Name the likely merge mistake from the merged weight W (W0: before merge; scaling: the layer's)."""
    BA = B @ A
    candidates = []
    name = _scaling_name(float(scaling))
    if name is not None:
        candidates.append((W0 + float(scaling) * BA, f"the layer's scaling is {name}, not alpha / rank "
                           "(see 'scaling is alpha / rank')"))
    candidates += [
        (W0, "merge() did not change base.weight (updated a copy? rebound a local name?)"),
        (W0 + BA, "merge adds B @ A without the scaling: multiply by scaling (alpha / rank)"),
        (W0 + 2 * SCALING * BA, "the update was added twice"),
        (W0 - SCALING * BA, "merge subtracts the update: it must add it"),
    ]
    if W0.shape[0] == W0.shape[1]:
        candidates.append((W0 + SCALING * BA.T, "the update is transposed: delta = lora_B @ lora_A (out x in), "
                           "not (B @ A).T or A.T @ B.T"))
    return next((h for cand, h in candidates if _maxdiff(W, cand) <= ATOL),
                "merge: base.weight += (lora_B @ lora_A) * scaling, in place under torch.no_grad()")


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q = nn.Linear(d, d)  # "q" must not match "q_proj" and vice versa
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)  # "proj" must not match "o_proj"
        self.q_norm = nn.LayerNorm(d)  # a non-Linear target

    def forward(self, x):
        return self.o_proj(self.q(x) + self.q_proj(self.q_norm(x)) + self.k_proj(x) + self.v_proj(x))


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = _Attn(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.proj = nn.Linear(d, d)  # the exact name "proj"

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.proj(self.mlp(x))


class TinyModel(nn.Module):
    """Names: embed, layers.{0,1}.attn.{q,q_proj,k_proj,v_proj,o_proj,q_norm}, layers.N.mlp.{0,2},
    layers.N.proj, norm, lm_head."""

    def __init__(self, vocab=11, d=8, n_layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_Block(d) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def _peft_targets(model: nn.Module, targets) -> set[str]:
    """The Linear layers PEFT would wrap for this target list."""
    config = _ref("LoraConfig")(target_modules=list(targets))
    matches = _ref("matches")
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n and bool(matches(config, n))}


def _wrapped(model: nn.Module) -> set[str]:
    """Names of the LoRA layers installed where the name says. get_submodule walks attribute by attribute,
    so a layer stored by setattr(model, "layers.0.attn.q_proj", ...) under a dotted key does not count."""
    found = set()
    for n, m in model.named_modules():
        if n and hasattr(m, "lora_A") and hasattr(m, "lora_B"):
            try:
                if model.get_submodule(n) is m:
                    found.add(n)
            except AttributeError:
                pass
    return found


def _apply(impl, targets, rank=RANK, alpha=ALPHA, dropout=None):
    model = TinyModel()
    original = copy.deepcopy(model)
    if dropout is None:
        out = impl.apply_lora(model, list(targets), rank, alpha)
    else:
        out = impl.apply_lora(model, list(targets), rank, alpha, dropout)
    # Grade what came back if it is a model (a copy is the "returns the model" check's business), so that
    # one mistake fails one check.
    return (out if isinstance(out, nn.Module) else model), original, out


def _names(s) -> str:
    s = sorted(s)
    return ", ".join(s[:4]) + (f" (+{len(s) - 4} more)" if len(s) > 4 else "") if s else "none"


def _compare_targets(impl, targets):
    model, original, _ = _apply(impl, targets)
    want, got = _peft_targets(original, targets), _wrapped(model)
    return want, got, original


_MATCHING = "match like PEFT: name == target or name.endswith('.' + target)"


_WRONG_MATCHERS = (  # (rule, what it is called)
    (lambda n, t: t in n, "substring target matching (`target in name`, the seed's bug)"),
    (lambda n, t: n.endswith(t), "name.endswith(target) without the dot"),
    (lambda n, t: n.rsplit(".", 1)[-1] == t, "comparing only the last name component (a target may be a dotted "
                                              "suffix like 'attn.v_proj', or a full name)"),
)


def _matching_failure(targets, want, got, original):
    """Report missing / extra layers, naming the wrong matching rule(s) that explain them."""
    linears = [n for n, m in original.named_modules() if isinstance(m, nn.Linear) and n]
    rules = [name for rule, name in _WRONG_MATCHERS
             if got == {n for n in linears if any(rule(n, t) for t in targets)}]
    examples = []
    for n in sorted(got - want)[:1]:
        t = next((t for t in targets if t in n), targets[0])
        examples.append(f"{t!r} must not match {n!r}")
    for n in sorted(want - got)[:1]:
        t = next((t for t in targets if n == t or n.endswith("." + t)), targets[0])
        examples.append(f"{t!r} must match {n!r}")
    hint = (" or ".join(rules) + ": " if rules else "") + "; ".join(examples) + "; " + _MATCHING
    if not got:
        hint = ("nothing was wrapped: replace each matching nn.Linear on its parent module "
                "(setattr(parent, child_name, LoRALinear(module, ...))); " + _MATCHING)
    return failed(f"targets {targets}: missing {_names(want - got)}; extra {_names(got - want)}", hint)


_NON_LINEAR = {"q_norm": "the LayerNorm", "attn": "the container", "mlp": "the nn.Sequential", "embed": "the Embedding"}


def _count(impl, model):
    out = impl.count_parameters(model)
    return tuple(int(v) for v in out)


def _count_hint(got) -> str:
    """Name the mistake behind a wrong count of Linear(10, 5) + Linear(5, 3, bias=False) with 50 of 70 frozen."""
    return {(70, 70): "frozen parameters counted as trainable: count only p.requires_grad for the trainable figure",
            (70, 20): "the order is (trainable, total), not (total, trainable)",
            (20, 20): "total counts every parameter, frozen ones included"}.get(
        got, "trainable: sum(p.numel() for p in params if p.requires_grad); total: every p.numel()")


# ------------------------------------------------------------------------ options together --
# A LoRA (or DoRA) layer's options, all combined: 2 x 2 x 2 x 3 = 24 layers, each against PEFT's
LAYER_OPTIONS = {"bias": [True, False], "mode": ["eval", "train"], "dropout": [0.0, 0.5],
                 "merge": ["unmerged", "merged", "merged, then unmerged"]}


def _magnitude(base: nn.Linear) -> torch.Tensor:
    """A trained-looking DoRA magnitude: the row norms of W, scaled by 0.8 to 1.2 (not the init)."""
    return base.weight.detach().norm(dim=1) * torch.linspace(0.8, 1.2, base.out_features)


def _trainable(layer, dora: bool) -> dict:
    if hasattr(layer, "base_layer"):  # PEFT's
        found = {"lora_A": layer.lora_A["default"].weight, "lora_B": layer.lora_B["default"].weight}
        if dora:
            found["magnitude"] = layer.lora_magnitude_vector["default"].weight
        return found
    return {"lora_A": _t(layer.lora_A), "lora_B": _t(layer.lora_B), **({"magnitude": layer.magnitude} if dora else {})}


def layer_trial(impl, combo: dict, *, dora: bool = False) -> str | None:
    """The learner's LoRALinear (or DoRALinear) and PEFT's on copies of one base, with the same A, B (and
    magnitude), in the combination's mode and merge state: base.weight, the output (the same dropout mask:
    one seed before each forward) and, unless merged, the gradients of A, B, the magnitude and the input.
    None when all agree within ATOL / GRAD_ATOL, else what differs."""
    base = _base(bias=combo["bias"])
    p = combo["dropout"]
    ours = (impl.DoRALinear if dora else impl.LoRALinear)(copy.deepcopy(base), RANK, ALPHA, p)
    A, B = _random_AB()
    _set_AB(ours, A, B)
    ref = _peft_layer(copy.deepcopy(base), A, B, dropout=p, dora=dora)
    if dora:
        with torch.no_grad():
            ours.magnitude.copy_(_magnitude(base))
            ref.lora_magnitude_vector["default"].weight.copy_(_magnitude(base))
    for layer in (ours, ref):
        layer.train(combo["mode"] == "train")
        if combo["merge"] != "unmerged":
            with torch.no_grad():
                layer.merge()
                if combo["merge"] == "merged, then unmerged":
                    layer.unmerge()
    diff = _maxdiff(ours.base.weight, ref.base_layer.weight)
    if diff > ATOL:
        return f"base.weight max |diff| {diff:.2e} vs PEFT's ({combo['merge']})"
    generator = torch.Generator().manual_seed(5)
    x, g = torch.randn(2, 3, IN, generator=generator), torch.randn(2, 3, OUT, generator=generator)
    results = []
    for layer in (ours, ref):
        x_ = x.clone().requires_grad_(True)
        torch.manual_seed(7)  # the same dropout mask for both
        y = layer(x_)
        grads = {}
        if combo["merge"] != "merged":
            (y * g).sum().backward()
            grads = {"input": x_.grad, **{k: t.grad for k, t in _trainable(layer, dora).items()}}
        results.append((y.detach(), grads))
    (y, grads), (y_ref, grads_ref) = results
    if y.shape != y_ref.shape or _maxdiff(y, y_ref) > ATOL:
        return f"output max |diff| {_maxdiff(y, y_ref) if y.shape == y_ref.shape else float('inf'):.2e} vs PEFT's"
    for name, want in grads_ref.items():
        got = grads.get(name)
        if got is None or not torch.allclose(got, want, atol=GRAD_ATOL, rtol=GRAD_RTOL):
            return f"{name}.grad {'is None' if got is None else f'max |diff| {_maxdiff(got, want):.2e}'} vs PEFT's"
    return None


# apply_lora's options, all combined (3 x 2 x 2 = 12): target kinds (k_proj has no bias), rank and alpha, dropout
APPLY_OPTIONS = {"targets": [("q_proj", "v_proj"), ("attn.v_proj", "lm_head"), ("k_proj",)],
                 "rank, alpha": [(4, 12.0), (2, 3.0)], "dropout": [0.0, 0.5]}


def apply_trial(impl, combo: dict) -> str | None:
    """apply_lora on the tiny model: PEFT's layers wrapped, each with the given rank, the learner's own
    LoRALinear's scaling and dropout, only lora_A / lora_B trainable, the output unchanged at init."""
    rank, alpha = combo["rank, alpha"]
    model, original, _ = _apply(impl, combo["targets"], rank=rank, alpha=alpha, dropout=combo["dropout"])
    want, got = _peft_targets(original, combo["targets"]), _wrapped(model)
    if got != want:
        return f"wrapped {_names(got)}; PEFT wraps {_names(want)}"
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        if _maxdiff(model(ids), original.eval()(ids)) > EXACT:
            return "the output changed at init"
    scaling = float(_lora(impl, _base(8, 8), rank=rank, alpha=alpha).scaling)
    layers = [model.get_submodule(n) for n in sorted(got)]
    lora = {id(_t(getattr(m, k))) for m in layers for k in ("lora_A", "lora_B")}
    if {id(p) for p in model.parameters() if p.requires_grad} != lora:
        return "trainable parameters other than lora_A / lora_B (or some of those frozen)"
    for m in layers:
        if _t(m.lora_A).shape[0] != rank or not math.isclose(float(m.scaling), scaling, rel_tol=1e-6):
            return f"a layer of rank {_t(m.lora_A).shape[0]}, scaling {float(m.scaling):g}"
        with torch.no_grad():
            _t(m.lora_B).normal_()
    model.train()
    with torch.no_grad():
        varies = _maxdiff(model(ids), model(ids)) > 0.0
    if varies != (combo["dropout"] > 0):
        return f"train mode, dropout={combo['dropout']}: two calls {'differ' if varies else 'agree'}"
    return None


class _TiedModel(nn.Module):
    """An embedding tied to the output layer (GPT-2's weight tying), with a Linear between: 40 + 20 parameters."""

    def __init__(self):
        super().__init__()
        self.embed, self.mid, self.head = nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


COUNT_OPTIONS = {"model": ["plain", "tied"], "frozen": ["nothing", "the first weight", "everything"]}


def count_trial(impl, combo: dict) -> str | None:
    model = _TiedModel() if combo["model"] == "tied" else nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 3, bias=False))
    first = next(model.parameters())  # the tied weight, or the first Linear's
    for p in model.parameters():
        p.requires_grad_(combo["frozen"] == "nothing" or (combo["frozen"] == "the first weight" and p is not first))
    params = list(model.parameters())
    want = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
    got = _count(impl, model)
    return None if got == want else f"got {got}, expected {want}"


# The three checks of options together, as the grader registers them (lora.py; DoRA's in lora_dora.py).
_LAYER_HINTS = {
    False: [({"bias": False}, "a layer without a bias fails: base.bias is None there; freeze the wrapped layer "
                              "with `for p in base.parameters(): p.requires_grad_(False)`"),
            ({"mode": "train", "merge": "merged"}, "right in eval mode, wrong in train mode once merged: forward "
                                                   "must skip the LoRA branch whenever the layer is merged (the "
                                                   "flag), not only in eval mode")],
    True: [({"bias": True, "merge": {"unmerged", "merged, then unmerged"}},
            "right without a bias, wrong with one: the bias is added after m / n scales the rest (base(x) minus its "
            "bias is W x)"),
           ({"mode": "train", "dropout": 0.5, "merge": {"unmerged", "merged, then unmerged"}},
            "right without dropout, wrong with it in train mode: the direction term must see the dropped input too "
            "(y = base(x) + (m / n - 1) W dropout(x) + (m / n) scaling B A dropout(x)), the base the clean x")],
}


def layers_together(impl, *, dora: bool):
    combos = product(LAYER_OPTIONS)
    return check_together(combos, lambda c: layer_trial(impl, c, dora=dora),
                          f"all {len(combos)} combinations equal PEFT's {'DoRA' if dora else 'LoRA'} (weights, "
                          "output, gradients)", hints=_LAYER_HINTS[dora])


def apply_lora_together(impl):
    hints = [({"targets": ("k_proj",)}, "targets whose layers have no bias (k_proj) fail: base.bias is None there; "
                                        "freeze with `for p in base.parameters(): p.requires_grad_(False)`")]
    combos = product(APPLY_OPTIONS)
    return check_together(combos, lambda c: apply_trial(impl, c), f"all {len(combos)} combinations: PEFT's layers, "
                          "the given rank, scaling and dropout, only LoRA trainable", hints=hints)


def count_together(impl):
    hints = [({"model": "tied", "frozen": {"the first weight", "everything"}},
              "a frozen tied weight is counted twice: the frozen ones must come from model.parameters() too (it "
              "yields a shared tensor once), not from every module's own parameters")]
    combos = product(COUNT_OPTIONS)
    return check_together(combos, lambda c: count_trial(impl, c), f"all {len(combos)} combinations of tied and "
                          "frozen weights", hints=hints)

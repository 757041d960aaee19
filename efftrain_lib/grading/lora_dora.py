"""Checks of Exercise 1.5, DoRALinear(base, rank, alpha, dropout=0.0): DoRA (Liu et al. 2024) built from the
learner's own LoRALinear. The chapter gives the formula and never shows the code; the reference is PEFT's DoRA
(peft.tuners.lora.Linear with use_dora=True, peft 0.21.2) with the same A, B and magnitude copied in. The
grader, efftrain_lib/grading/lora.py, registers these checks after 1.4 (DORA_CHECKS, in report order).

Tolerances as the grader's: outputs and merged weights max |diff| <= 1e-5, gradients 1e-5 + 1e-4 |ref|,
"equals the base model" at init 1e-6. With dropout, both layers draw their mask after the same seed: the
exercise asks for one nn.Dropout call on x, as PEFT makes.
"""

from __future__ import annotations

import copy

import torch

from efftrain_lib.grading import Checks, failed, passed
from efftrain_lib.grading.lora_support import (
    ALPHA, ATOL, EXACT, GRAD_ATOL, GRAD_RTOL, IN, OUT, RANK, SCALING, _base, _magnitude, _maxdiff, _peft_layer,
    _random_AB, _set_AB, _trainable, layers_together,
)

DORA_CHECKS = Checks()  # this exercise's checks, in report order: the grader adds them to its own


def _check(name: str, hint: str):
    return DORA_CHECKS.add("1.5", name, hint)


def _dora_pair(impl, *, bias=True, dropout=0.0):
    """The learner's DoRALinear and PEFT's on copies of one base, with the same A, B and a trained magnitude."""
    base = _base(bias=bias)
    ours = impl.DoRALinear(copy.deepcopy(base), RANK, ALPHA, dropout)
    A, B = _random_AB()
    _set_AB(ours, A, B)
    ref = _peft_layer(copy.deepcopy(base), A, B, dropout=dropout, dora=True)
    with torch.no_grad():
        ours.magnitude.copy_(_magnitude(base))
        ref.lora_magnitude_vector["default"].weight.copy_(_magnitude(base))
    return ours, ref, base


_RULE = ("y = (m / n) (W x + scaling B A x) + bias, n = ||W + scaling B @ A|| per output row (dim=1), detached")


@_check("magnitude starts at the row norms: output equals base at init",
        hint="magnitude = nn.Parameter(base.weight.detach().norm(dim=1)): one per output feature, so m / n = 1 "
             "at init")
def dora_magnitude_starts_at_row_norms(impl):
    base = _base()
    layer = impl.DoRALinear(copy.deepcopy(base), RANK, ALPHA)
    m = getattr(layer, "magnitude", None)
    if not isinstance(m, torch.nn.Parameter) or tuple(m.shape) != (OUT,):
        shape = None if m is None else tuple(m.shape)
        hint = ("the magnitude holds one value per output feature (out_features), the norms of W's rows "
                "(norm(dim=1)), not of its columns" if shape == (IN,) else
                "keep the magnitude as an nn.Parameter of out_features values, named magnitude")
        return failed(f"magnitude: {type(m).__name__} of shape {shape}; expected an nn.Parameter of shape ({OUT},)",
                      hint)
    rows = base.weight.detach().norm(dim=1)
    if _maxdiff(m, rows) > EXACT:
        hint = ("the magnitude starts at ones: it must start at the row norms of W, so that m / n = 1 and the "
                "layer starts exactly at base(x)" if _maxdiff(m, torch.ones(OUT)) <= EXACT else
                "the magnitude must start at the row norms of W: base.weight.detach().norm(dim=1)")
        return failed(f"magnitude at init max |diff| {_maxdiff(m, rows):.2e} vs the row norms of W", hint)
    x = torch.randn(2, 3, IN)
    with torch.no_grad():
        diff = _maxdiff(layer(x), base(x))
    if diff > EXACT:
        return failed(f"output at init max |diff| {diff:.2e} vs base(x)",
                      f"at init B = 0 and m = n, so the layer must compute base(x): {_RULE}")
    return passed(f"magnitude = row norms of W; output at init max |diff| {diff:.1e} vs base(x)")


@_check("forward matches PEFT's DoRA (B != 0, magnitude trained)", hint=f"forward: {_RULE}")
def dora_forward_matches_peft(impl):
    ours, ref, _ = _dora_pair(impl)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, IN)
    with torch.no_grad():
        y, y_ref = ours(x), ref(x)
    diff = _maxdiff(y, y_ref)
    if diff > ATOL:
        with torch.no_grad():  # what a layer that scales the bias by m / n too would give
            weight = ref.base_layer.weight + SCALING * (ref.lora_B["default"].weight @ ref.lora_A["default"].weight)
            factor = ref.lora_magnitude_vector["default"].weight / weight.norm(dim=1)
            bias_scaled = _maxdiff(y, y_ref + (factor - 1) * ref.base_layer.bias) <= ATOL
        hint = ("the bias is scaled by m / n too: the magnitude scales W x + scaling B A x, and the bias is added "
                "after it" if bias_scaled else f"forward: {_RULE}")
        return failed(f"eval mode: max |diff| {diff:.2e} vs PEFT's DoRA (tolerance {ATOL:g})", hint)
    return passed(f"max |diff| {diff:.1e} vs PEFT's DoRA")


@_check("gradients match PEFT's DoRA (A, B, magnitude and input; the norm detached)",
        hint="n = ||W + scaling B @ A|| is a constant for backward: .detach() it, as the paper (section 4.3) and "
             "PEFT do")
def dora_gradients_match_peft(impl):
    ours, ref, _ = _dora_pair(impl)
    x = torch.randn(2, 3, IN)
    g = torch.randn(2, 3, OUT)
    worst = 0.0
    grads = []
    for layer in (ours, ref):
        x_ = x.clone().requires_grad_(True)
        (layer(x_) * g).sum().backward()
        grads.append({"input": x_.grad, **{k: t.grad for k, t in _trainable(layer, dora=True).items()}})
    for name, want in grads[1].items():
        got = grads[0][name]
        if got is None:
            return failed(f"no gradient for {name}", "lora_A, lora_B and the magnitude are trainable parameters "
                                                     "used in forward; do not detach them")
        worst = max(worst, _maxdiff(got, want))
        if not torch.allclose(got, want, atol=GRAD_ATOL, rtol=GRAD_RTOL):
            return failed(f"{name}.grad max |diff| {_maxdiff(got, want):.2e} vs PEFT's DoRA",
                          "the norm is not detached: n = ||W + scaling B @ A|| must be a constant for backward "
                          "(.detach()), as the paper's section 4.3 and PEFT do; otherwise A and B get a gradient "
                          "through it")
    return passed(f"max |diff| {worst:.1e} vs PEFT's DoRA (A, B, magnitude, input)")


@_check("dropout: the base keeps x, one mask feeds the direction term and the LoRA branch",
        hint="with dropout: y = base(x) + (m / n - 1) W dropout(x) + (m / n) scaling B A dropout(x), one mask")
def dora_dropout_like_peft(impl):
    ours, ref, _ = _dora_pair(impl, dropout=0.5)
    ours.train(), ref.train()
    x = torch.randn(4, 3, IN)
    ys = []
    for layer in (ours, ref):
        torch.manual_seed(7)  # the same mask, drawn once on x by each
        with torch.no_grad():
            ys.append(layer(x))
    diff = _maxdiff(*ys)
    if diff > ATOL:
        return failed(f"train mode, dropout 0.5 (the same seed): max |diff| {diff:.2e} vs PEFT's DoRA",
                      "with dropout the direction term must see the dropped input too, and the base the clean x: "
                      "y = base(x) + (m / n - 1) W dropout(x) + (m / n) scaling B A dropout(x), with one mask "
                      "drawn once (self.dropout(x)) for both")
    return passed(f"train mode, dropout 0.5: max |diff| {diff:.1e} vs PEFT's DoRA with the same mask")


@_check("merge and unmerge match PEFT's DoRA",
        hint="merge: base.weight = (m / n)[:, None] (W + scaling B @ A), keeping n for unmerge: "
             "W = base.weight / (m / n)[:, None] - scaling B @ A")
def dora_merge_and_unmerge_match_peft(impl):
    ours, ref, base = _dora_pair(impl)
    ours.eval(), ref.eval()
    W0 = base.weight.detach().clone()
    x = torch.randn(5, IN)
    with torch.no_grad():
        y0 = ref(x)
        ours.merge()
        ref.merge()
        merged, y1 = ours.base.weight.detach().clone(), ours(x)
    diff = _maxdiff(merged, ref.base_layer.weight)
    if diff > ATOL:
        delta = SCALING * (_trainable(ours, True)["lora_B"] @ _trainable(ours, True)["lora_A"]).detach()
        like_lora = _maxdiff(merged, W0 + delta) <= ATOL
        return failed(f"merged weight max |diff| {diff:.2e} vs PEFT's DoRA merge",
                      "merged like plain LoRA (W + scaling B @ A): DoRA's merged weight is (m / n)[:, None] "
                      "(W + scaling B @ A)" if like_lora else
                      "merge: base.weight = (m / n)[:, None] (W + scaling B @ A), n of the unmerged weight")
    if _maxdiff(y1, y0) > ATOL:
        return failed(f"merged forward max |diff| {_maxdiff(y1, y0):.2e} vs the unmerged output",
                      "after merge() forward must be base(x) alone: the update is inside base.weight now")
    with torch.no_grad():
        ours.unmerge()
    restored = _maxdiff(ours.base.weight, W0)
    if restored > ATOL:
        return failed(f"after merge(); unmerge(): max |W - W0| {restored:.2e}",
                      "unmerge must divide by the factor merge used, m / n with n the norm of the *unmerged* "
                      "weight (keep it at merge): the merged weight's row norms are m, not n")
    return passed(f"merged weight max |diff| {diff:.1e} vs PEFT's; W restored to {restored:.1e}")


@_check("every bias, train and eval mode, dropout and merge state together",
        hint="each option must survive the others: the bias added after the magnitude, one dropout mask for the "
             "direction and the branch in train mode, merge and unmerge with or without a bias")
def dora_options_together(impl):
    return layers_together(impl, dora=True)

"""Unit tests of efftrain_lib.lora: behaviour, name matching, parameter counts, clear errors.

No PEFT here (see test_lora_vs_peft.py): these must pass with only torch installed.
Tolerances: fp32 throughout; "exact" means torch.equal, otherwise atol is stated per test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from efftrain_lib.lora import (
    DoRALinear,
    LoRALinear,
    apply_lora,
    count_parameters,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    matching_module_names,
    merge_lora,
    unmerge_lora,
)
from efftrain_lib.models import TinyConfig, TinyTransformer

ATOL = 1e-6  # fp32 merge / unmerge / formula checks on weights and activations of order 1


def make_layer(rank=4, alpha=8.0, dropout=0.0, *, bias=True, trained=True, seed=0, use_dora=False,
               **kw) -> LoRALinear:
    """A LoRA (or DoRA) layer 16 -> 12; `trained` gives B random values so the update is not zero.

    Sizes keep activations of order 1, so an absolute tolerance of 1e-6 is ~10 fp32 ulps.
    """
    torch.manual_seed(seed)
    layer = (DoRALinear if use_dora else LoRALinear)(nn.Linear(16, 12, bias=bias), rank, alpha, dropout, **kw)
    if trained:
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.2)
    return layer


def tiny_model(seed=0, **cfg) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(TinyConfig(**{"n_layers": 2, **cfg}))


class Toy(nn.Module):
    """Names chosen to separate suffix matching from substring matching."""

    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.q = nn.Linear(8, 8)
        self.attn.q_proj = nn.Linear(8, 8)
        self.attn.o_proj = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.attn.o_proj(self.attn.q_proj(self.attn.q(x)))
        return self.lm_head(self.norm(self.proj(x)))


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------


def test_init_shapes_and_distribution():
    layer = make_layer(trained=False)
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (12, 4)
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(16)  # kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > bound / 2
    assert layer.scaling == 8.0 / 4 and layer.rank == 4 and layer.alpha == 8.0 and not layer.merged


def test_rslora_scaling():
    assert make_layer(rank=9, alpha=6.0, use_rslora=True).scaling == 6.0 / math.sqrt(9) == 2.0
    assert make_layer(rank=9, alpha=6.0).scaling == 6.0 / 9


def test_zero_B_output_equals_base_exactly():
    layer = make_layer(trained=False)
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), layer.base(x))


def test_forward_matches_the_formula():
    layer = make_layer()
    x = torch.randn(3, 5, 16)
    expected = layer.base(x) + (x @ layer.lora_A.T @ layer.lora_B.T) * layer.scaling
    torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)
    assert layer(torch.randn(16)).shape == (12,)  # unbatched input, like nn.Linear


def test_zero_A_and_zero_B_give_zero_gradients_to_both():
    # The reason PEFT zeroes only B: with both zero, neither gets a gradient and training never starts.
    layer = make_layer(trained=False)
    with torch.no_grad():
        layer.lora_A.zero_()
    layer(torch.randn(8, 16)).pow(2).sum().backward()
    assert torch.count_nonzero(layer.lora_A.grad) == 0 and torch.count_nonzero(layer.lora_B.grad) == 0

    # With A random and B zero: B gets a gradient at once, A only after B moves.
    layer = make_layer(trained=False)
    layer(torch.randn(8, 16)).pow(2).sum().backward()
    assert torch.count_nonzero(layer.lora_A.grad) == 0 and torch.count_nonzero(layer.lora_B.grad) > 0


def test_base_weight_and_bias_stay_frozen():
    layer = make_layer()
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    before = [t.clone() for t in (layer.base.weight, layer.base.bias)]
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    layer(torch.randn(8, 16)).sum().backward()
    opt.step()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert torch.equal(layer.base.weight, before[0]) and torch.equal(layer.base.bias, before[1])
    assert [p for p in layer.parameters() if p.requires_grad] == [layer.lora_A, layer.lora_B]


def test_dropout_only_on_the_lora_branch():
    layer = make_layer(dropout=0.9, trained=False).train()
    x = torch.randn(4, 16)
    # B = 0: if dropout touched the base path, base(x) would be masked and rescaled here.
    assert torch.equal(layer(x), layer.base(x))
    with torch.no_grad():
        layer.lora_B.normal_()
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    mask_x = layer.dropout(x)
    expected = layer.base(x) + (mask_x @ layer.lora_A.T @ layer.lora_B.T) * layer.scaling
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    layer.eval()
    assert torch.equal(layer(x), layer(x))  # no dropout in eval


def test_delta_weight():
    layer = make_layer()
    torch.testing.assert_close(layer.delta_weight(), layer.lora_B @ layer.lora_A * layer.scaling, atol=ATOL, rtol=0)


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_matches_unmerged_and_unmerge_restores_w(use_dora):
    layer = make_layer(use_dora=use_dora)
    x = torch.randn(3, 5, 16)
    unmerged = layer(x)
    w0 = layer.base.weight.clone()
    layer.merge()
    assert layer.merged
    assert not torch.allclose(layer.base.weight, w0)  # the update really moved into W
    torch.testing.assert_close(layer(x), unmerged, atol=ATOL, rtol=0)
    torch.testing.assert_close(layer(x), layer.base(x), atol=0, rtol=0)  # merged forward is the base alone
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, w0, atol=ATOL, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=ATOL, rtol=0)


def test_dora_is_its_own_class_and_lora_has_no_dora_switch():
    assert DoRALinear(nn.Linear(16, 12), 4, 8).use_dora and not LoRALinear(nn.Linear(16, 12), 4, 8).use_dora
    assert type(LoRALinear(nn.Linear(16, 12), 4, 8)) is LoRALinear
    with pytest.raises(TypeError, match="use_dora"):
        LoRALinear(nn.Linear(16, 12), 4, 8, use_dora=True)  # no silent switch to another class
    assert isinstance(apply_lora(tiny_model(), ["q_proj"], 2, 4, use_dora=True).layers[0].self_attn.q_proj,
                      DoRALinear)


def test_rank_above_min_in_out_is_refused():
    with pytest.raises(ValueError, match=r"LoRA rank 13 is larger than layer 12 x 16 allows \(at most min\(out, in\) = 12\)"):
        LoRALinear(nn.Linear(16, 12), 13, 8)
    model = tiny_model()
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match="larger than layer"):
        apply_lora(model, ["q_proj"], 10_000, 8)
    assert [p.requires_grad for p in model.parameters()] == before  # refused before anything changed


def test_dora_init_and_formula():
    layer = make_layer(trained=False, use_dora=True)
    torch.testing.assert_close(layer.magnitude, layer.base.weight.norm(dim=1), atol=0, rtol=0)
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), layer.base(x))  # factor m / ||W|| is exactly 1 at init

    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.mul_(1.5)
    W, b, s = layer.base.weight, layer.base.bias, layer.scaling
    merged_direction = W + s * layer.lora_B @ layer.lora_A
    factor = layer.magnitude / merged_direction.norm(dim=1).detach()
    expected = factor * (x @ W.T + s * x @ layer.lora_A.T @ layer.lora_B.T) + b
    torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)


def test_dora_norm_is_detached():
    # The norm is a constant for autograd (DoRA section 4.3): A's gradient is that of the formula
    # with the norm computed from detached tensors.
    layer = make_layer(use_dora=True)
    x = torch.randn(6, 16)
    layer(x).sum().backward()
    A = layer.lora_A.detach().clone().requires_grad_(True)
    B = layer.lora_B.detach()
    W, b, s = layer.base.weight, layer.base.bias, layer.scaling
    norm = (W + s * B @ A.detach()).norm(dim=1)
    ((layer.magnitude.detach() / norm) * (x @ W.T + s * x @ A.T @ B.T) + b).sum().backward()
    torch.testing.assert_close(layer.lora_A.grad, A.grad, atol=ATOL, rtol=0)
    assert layer.magnitude.grad is not None and layer.magnitude.requires_grad


def test_autocast_bf16_keeps_dtype():
    for use_dora in (False, True):
        layer = make_layer(use_dora=use_dora)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(torch.randn(4, 16))
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert layer.lora_A.grad.dtype == torch.float32  # master weights stay fp32


# ------------------------------------------------------------------------------------------------
# Name matching (PEFT's rules, not substring matching)
# ------------------------------------------------------------------------------------------------


def test_list_entry_matches_full_name_or_dotted_suffix():
    toy = Toy()
    assert matching_module_names(toy, ["q"]) == ["attn.q"]  # not attn.q_proj
    assert matching_module_names(toy, ["attn.q"]) == ["attn.q"]
    assert matching_module_names(toy, ["attn.q_proj", "lm_head"]) == ["attn.q_proj", "lm_head"]
    assert matching_module_names(toy, ["ttn.q"]) == []  # a suffix must start at a dot


def test_list_entry_is_not_a_substring():
    toy = Toy()
    substring_bug = [n for n, m in toy.named_modules() if "proj" in n]
    assert substring_bug == ["attn.q_proj", "attn.o_proj", "proj"]  # what `"proj" in name` would adapt
    assert matching_module_names(toy, ["proj"]) == ["proj"]


def test_string_is_a_full_match_regex():
    toy = Toy()
    assert matching_module_names(toy, r"attn\.(q|o)_proj") == ["attn.q_proj", "attn.o_proj"]
    assert matching_module_names(toy, "q") == []  # re.fullmatch: "q" is not the whole "attn.q"
    assert matching_module_names(toy, r".*proj") == ["attn.q_proj", "attn.o_proj", "proj"]


def test_all_linear_skips_the_output_layer():
    assert matching_module_names(Toy(), "all-linear") == ["attn.q", "attn.q_proj", "attn.o_proj", "proj"]
    names = matching_module_names(tiny_model(), "all-linear")
    assert len(names) == 2 * 7 and "lm_head" not in names


def test_apply_lora_on_tiny_transformer_targets_and_freezing():
    model = apply_lora(tiny_model(), ["q_proj", "v_proj"], rank=4, alpha=8)
    assert list(lora_layers(model)) == [f"layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith(("lora_A", "lora_B")) for n in trainable) and len(trainable) == 8
    assert lora_parameters(model) == [p for p in model.parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------------
# Counts and state dicts
# ------------------------------------------------------------------------------------------------


def test_count_parameters_equals_hand_formula():
    model = tiny_model()
    _, total_before = count_parameters(model)
    d, k, ffn, r, n_layers = 64, 64, 172, 4, 2
    apply_lora(model, ["q_proj", "v_proj", "down_proj"], rank=r, alpha=8)
    # (d + k) * r per adapted d x k layer: q and v are 64 x 64, down_proj is 172 -> 64.
    expected = n_layers * (2 * (d + k) * r + (ffn + d) * r)
    assert count_parameters(model) == (expected, total_before + expected)


def test_count_parameters_dora_adds_one_magnitude_per_output():
    model = apply_lora(tiny_model(), ["q_proj"], rank=2, alpha=4, use_dora=True)
    assert count_parameters(model)[0] == 2 * ((64 + 64) * 2 + 64)


def test_lora_state_dict_round_trip():
    model = apply_lora(tiny_model(), ["q_proj", "v_proj"], rank=4, alpha=8, use_dora=True)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.add_(torch.randn_like(p))
    state = lora_state_dict(model)
    assert set(state) <= set(model.state_dict()) and len(state) == 4 * 3
    fresh = apply_lora(tiny_model(), ["q_proj", "v_proj"], rank=4, alpha=8, use_dora=True)
    result = fresh.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    ids = torch.randint(0, 96, (2, 16))
    assert torch.equal(fresh(ids), model(ids))


def test_merge_lora_whole_model():
    model = apply_lora(tiny_model(), "all-linear", rank=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.05)
    ids = torch.randint(0, 96, (2, 16))
    before = model(ids)
    merge_lora(model)
    torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=0)  # 2 layers of fp32 rounding
    unmerge_lora(model)
    torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Clear errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, -2, 2.5, True])
def test_bad_rank(rank):
    with pytest.raises(ValueError, match=r"rank must be a positive integer.*got"):
        LoRALinear(nn.Linear(4, 4), rank, 1.0)
    with pytest.raises(ValueError, match="rank"):
        apply_lora(tiny_model(), ["q_proj"], rank, 1.0)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"alpha must be a finite number > 0"):
        LoRALinear(nn.Linear(4, 4), 2, alpha)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_bad_dropout(dropout):
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        LoRALinear(nn.Linear(4, 4), 2, 1.0, dropout)


def test_target_that_is_not_linear_says_its_type():
    with pytest.raises(TypeError, match=r"'norm' is a LayerNorm.*only nn\.Linear"):
        apply_lora(Toy(), ["norm"], 2, 4)
    with pytest.raises(TypeError, match="RMSNorm"):
        apply_lora(tiny_model(), ["input_layernorm"], 2, 4)
    with pytest.raises(TypeError, match="got Conv1d"):
        LoRALinear(nn.Conv1d(2, 2, 1), 2, 4)


def test_targets_matching_nothing_list_existing_names():
    with pytest.raises(ValueError, match=r"matched no module.*layers\.0\.self_attn\.q_proj"):
        apply_lora(tiny_model(), ["query"], 2, 4)
    with pytest.raises(ValueError, match="matched no module"):
        apply_lora(tiny_model(), "q_proj", 2, 4)  # a regex must match the whole name


@pytest.mark.parametrize("targets", [[], "", "(unclosed", [3], None])
def test_bad_target_modules(targets):
    with pytest.raises(ValueError, match="target_modules|matched no module"):
        apply_lora(tiny_model(), targets, 2, 4)


def test_applying_twice_to_one_layer():
    model = apply_lora(tiny_model(), ["q_proj"], 2, 4)
    with pytest.raises(ValueError, match=r"already applied to 'layers\.0\.self_attn\.q_proj'.*only once"):
        apply_lora(model, ["q_proj", "v_proj"], 2, 4)
    with pytest.raises(ValueError, match="only once"):
        apply_lora(model, "all-linear", 2, 4)
    with pytest.raises(ValueError, match="only once"):
        LoRALinear(model.layers[0].self_attn.q_proj, 2, 4)
    apply_lora(model, ["v_proj"], 2, 4)  # other layers may still be added
    assert len(lora_layers(model)) == 4 and len(lora_parameters(model)) == 8


def test_failed_apply_leaves_model_unchanged():
    model = tiny_model()
    with pytest.raises(TypeError):
        apply_lora(model, r".*(q_proj|input_layernorm)", 2, 4)  # q_proj fine, norm not: nothing changes
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_merge_twice_and_unmerge_unmerged():
    layer = make_layer()
    with pytest.raises(RuntimeError, match=r"not merged; unmerge\(\) is allowed only after merge\(\)"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match=r"already merged; call unmerge\(\) before merging again"):
        layer.merge()
    model = apply_lora(tiny_model(), ["q_proj"], 2, 4)
    with pytest.raises(RuntimeError, match="not merged"):
        unmerge_lora(model)
    merge_lora(model)
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(model)
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(tiny_model())


@pytest.mark.parametrize("use_dora", [False, True])
def test_non_finite_delta_refuses_to_merge(use_dora):
    layer = make_layer(use_dora=use_dora)
    w0 = layer.base.weight.clone()
    with torch.no_grad():
        layer.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*base\.weight was left unchanged"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base.weight, w0)


def test_merge_lora_is_all_or_nothing():
    model = apply_lora(tiny_model(), ["q_proj"], 2, 4)
    with torch.no_grad():
        model.layers[1].self_attn.q_proj.lora_B.fill_(float("inf"))
    w0 = model.layers[0].self_attn.q_proj.base.weight.clone()
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.q_proj.*no layer was merged"):
        merge_lora(model)
    assert not any(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(model.layers[0].self_attn.q_proj.base.weight, w0, atol=ATOL, rtol=0)


def test_training_moves_only_lora():
    model = apply_lora(tiny_model(), ["q_proj", "v_proj"], rank=4, alpha=8)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    ids = torch.randint(0, 96, (4, 16))
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(ids[:, :-1]).reshape(-1, 96), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

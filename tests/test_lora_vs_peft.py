"""Our LoRA against PEFT's, on a tiny transformers LlamaForCausalLM and on our TinyTransformer.

With the same base weights (same seed) and the same A, B (copied), outputs and gradients must agree.
Tolerances, fp32 on CPU: logits (of order 0.6) atol 1e-5; gradients of lora_A / lora_B / magnitude
(of order 5e-3) atol 1e-7, i.e. ~2e-5 relative. Measured here: plain LoRA and rsLoRA 0.0 for both
(bit-identical, because these tests' scalings 2 and 4 are powers of two); DoRA 1.5e-7 on logits and
1.4e-9 on gradients. Our forward folds the scaling into the rank-r activation and fuses the add into
one addmm, so with other scalings (e.g. 16/sqrt(8)) or BLAS builds it differs from PEFT by a few ulps
(~1.5e-7 on logits), well inside the tolerances.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

from efftrain_lib.adapters import ADAPTER_CONFIG, load_adapter, save_adapter  # noqa: E402
from efftrain_lib.lora import (  # noqa: E402
    apply_lora,
    count_parameters,
    lora_layers,
    lora_parameters,
    merge_lora,
)
from efftrain_lib.comparing import max_abs_diff  # noqa: E402
from efftrain_lib.models import TinyConfig, TinyTransformer  # noqa: E402
from efftrain_lib.reference_models import (  # noqa: E402
    copy_lora_weights,
    copy_lora_weights_from_peft,
    paired_lora_parameters,
    peft_lora_model,
    tiny_llama,
)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

OUT_ATOL = 1e-5
GRAD_ATOL = 1e-7
TARGETS = ["q_proj", "v_proj", "down_proj"]
VARIANTS = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}
IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))


def perturb_adapter(model) -> None:
    """Move the adapter off its init (B = 0 would make every comparison trivially equal)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def twin_models(targets=TARGETS, rank=4, alpha=8, **variant):
    """Our LoRA and PEFT's on two identical tiny Llamas, holding the same adapter values."""
    ours = apply_lora(tiny_llama(0), targets, rank, alpha, **variant)
    perturb_adapter(ours)
    theirs = peft_lora_model(tiny_llama(0), targets, rank, alpha, **variant)
    copy_lora_weights(ours, theirs)
    return ours, theirs


def peft_lora_names(peft_model) -> list[str]:
    prefix = "base_model.model."
    return [n[len(prefix):] for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_outputs_and_gradients_equal_peft(variant):
    ours, theirs = twin_models(**variant)
    out, ref = ours(IDS).logits, theirs(input_ids=IDS).logits
    assert max_abs_diff(out, ref) <= OUT_ATOL
    out.float().pow(2).mean().backward()
    ref.float().pow(2).mean().backward()
    pairs = paired_lora_parameters(ours, theirs)
    assert len(pairs) == 2 * len(TARGETS) * (3 if variant.get("use_dora") else 2)
    for name, mine, peft_param in pairs:
        assert mine.grad is not None and peft_param.grad is not None, name
        assert max_abs_diff(mine.grad, peft_param.grad) <= GRAD_ATOL, name


@pytest.mark.parametrize("variant", [{}, {"use_dora": True}], ids=["lora", "dora"])
def test_dropout_mask_on_the_same_branch_as_peft(variant):
    # Same RNG state -> same dropout masks, as long as both draw them on the LoRA branch only.
    ours, theirs = twin_models(dropout=0.5, **variant)
    ours.train(), theirs.train()
    torch.manual_seed(3)
    out = ours(IDS).logits
    torch.manual_seed(3)
    ref = theirs(input_ids=IDS).logits
    assert max_abs_diff(out, ref) <= OUT_ATOL
    assert max_abs_diff(out, ours.eval()(IDS).logits) > 1e-3  # dropout really was active


def test_init_distribution_matches_peft():
    ours = apply_lora(tiny_llama(0), ["q_proj"], 8, 16)
    theirs = peft_lora_model(tiny_llama(0), ["q_proj"], 8, 16)
    for _, mine, peft_param in paired_lora_parameters(ours, theirs):
        if peft_param.shape[0] == 8:  # lora_A: both U(-1/sqrt(64), 1/sqrt(64))
            assert mine.abs().max() <= 1 / 8 and peft_param.abs().max() <= 1 / 8
        else:  # lora_B: both zero
            assert torch.count_nonzero(mine) == 0 and torch.count_nonzero(peft_param) == 0


@pytest.mark.parametrize(
    "targets",
    [["q_proj", "v_proj"], ["self_attn.q_proj"], r"model\.layers\.1\.mlp\.(gate|up)_proj", r".*_proj", "all-linear"],
)
def test_same_layers_targeted_as_peft(targets):
    ours = apply_lora(tiny_llama(0), targets, 2, 4)
    theirs = peft_lora_model(tiny_llama(0), targets, 2, 4)
    assert list(lora_layers(ours)) == peft_lora_names(theirs)
    assert count_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())


def test_names_matching_nothing_fail_in_both():
    for targets in (["q"], "q_proj"):  # no suffix ".q"; regex must match the whole name
        with pytest.raises(ValueError, match="matched no module"):
            apply_lora(tiny_llama(0), targets, 2, 4)
        with pytest.raises(ValueError, match="not found in the base model"):
            peft_lora_model(tiny_llama(0), targets, 2, 4)


def test_merged_equals_peft_merge_and_unload():
    ours, theirs = twin_models(use_dora=True)
    merged_ref = theirs.merge_and_unload()(input_ids=IDS).logits
    assert max_abs_diff(merge_lora(ours)(IDS).logits, merged_ref) <= OUT_ATOL


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_our_adapter_loads_in_peft(tmp_path, variant):
    ours = apply_lora(tiny_llama(0), TARGETS, 4, 8, **variant)
    perturb_adapter(ours)
    save_adapter(ours, tmp_path, target_modules=TARGETS, rank=4, alpha=8, base_model_name_or_path="tiny-llama")
    assert json.loads((tmp_path / ADAPTER_CONFIG).read_text())["task_type"] == "CAUSAL_LM"
    theirs = PeftModel.from_pretrained(tiny_llama(0), tmp_path)
    assert peft_lora_names(theirs) == list(lora_layers(ours))
    assert max_abs_diff(ours(IDS).logits, theirs(input_ids=IDS).logits) <= OUT_ATOL
    for name, mine, peft_param in paired_lora_parameters(ours, theirs):
        assert torch.equal(mine, peft_param), name


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_peft_adapter_loads_in_ours(tmp_path, variant):
    theirs = peft_lora_model(tiny_llama(0), r"model\.layers\.\d+\.mlp\.(up|down)_proj", 4, 16, **variant)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(tiny_llama(0), tmp_path)
    assert list(lora_layers(ours)) == peft_lora_names(theirs)
    assert max_abs_diff(ours(IDS).logits, theirs(input_ids=IDS).logits) <= OUT_ATOL


def test_copy_from_peft_direction():
    ours = apply_lora(tiny_llama(0), TARGETS, 4, 8)
    theirs = peft_lora_model(tiny_llama(0), TARGETS, 4, 8)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    copy_lora_weights_from_peft(theirs, ours)
    assert max_abs_diff(ours(IDS).logits, theirs(input_ids=IDS).logits) <= OUT_ATOL


def test_pairing_refuses_different_layers():
    ours = apply_lora(tiny_llama(0), ["q_proj"], 4, 8)
    theirs = peft_lora_model(tiny_llama(0), ["v_proj"], 4, 8)
    with pytest.raises(ValueError, match=r"no LoRA layer 'base_model\.model\.model\.layers\.0\.self_attn\.q_proj'"):
        copy_lora_weights(ours, theirs)


def test_apply_lora_is_model_agnostic():
    # The same call on our TinyTransformer and on transformers' Llama: same layers, same count.
    rank, dim, n_layers = 4, 64, 2
    tiny = apply_lora(TinyTransformer(TinyConfig(hidden_size=dim, n_layers=n_layers)), ["q_proj", "v_proj"], rank, 8)
    llama = apply_lora(tiny_llama(0), ["q_proj", "v_proj"], rank, 8)
    expected = n_layers * 2 * (dim + dim) * rank
    assert count_parameters(tiny)[0] == count_parameters(llama)[0] == expected
    assert [n.removeprefix("model.") for n in lora_layers(llama)] == list(lora_layers(tiny))


def seeded_tiny_transformer() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(TinyConfig(n_layers=2))


def test_tiny_transformer_equals_peft_too():
    ours = apply_lora(seeded_tiny_transformer(), "all-linear", 4, 8, use_dora=True)
    perturb_adapter(ours)
    # PEFT's "all-linear" skips the output layer only on transformers models; ours always does.
    # So PEFT gets our exact layer names (a list entry equal to a full name matches that layer).
    names = list(lora_layers(ours))
    assert "lm_head" not in names
    assert "lm_head" in peft_lora_names(peft_lora_model(seeded_tiny_transformer(), "all-linear", 4, 8))
    theirs = peft_lora_model(seeded_tiny_transformer(), names, 4, 8, use_dora=True)
    copy_lora_weights(ours, theirs)
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    assert max_abs_diff(ours(ids), theirs(ids)) <= OUT_ATOL

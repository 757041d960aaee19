"""Saving and loading adapters in PEFT's on-disk format, without PEFT installed.

Interoperability with PEFT itself (PeftModel.from_pretrained, save_pretrained) is in
test_lora_vs_peft.py. Round trips here are exact (torch.equal): the same fp32 tensors come back.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from efftrain_lib import adapters
from efftrain_lib.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, save_adapter
from efftrain_lib.lora import apply_lora, lora_layers, lora_parameters, merge_lora
from efftrain_lib.models import TinyConfig, TinyTransformer

IDS = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))


def tiny_model(seed=0, **cfg) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(TinyConfig(**{"n_layers": 2, **cfg}))


def trained_lora(targets=("q_proj", "v_proj"), rank=4, alpha=8, **kw) -> TinyTransformer:
    """A LoRA model whose adapter is not at its init (B != 0, magnitude moved), so loading shows."""
    model = apply_lora(tiny_model(), list(targets), rank, alpha, **kw)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("variant", [{}, {"use_rslora": True}, {"use_dora": True}, {"dropout": 0.1}])
def test_round_trip_gives_the_same_model(tmp_path, variant):
    model = trained_lora(**variant).eval()
    save_adapter(model, tmp_path)
    loaded = load_adapter(tiny_model(), tmp_path).eval()
    assert torch.equal(loaded(IDS), model(IDS))
    assert list(lora_layers(loaded)) == list(lora_layers(model))
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]


def test_file_layout_is_peft_s(tmp_path):
    save_adapter(trained_lora(), tmp_path)
    weights = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    assert sorted(weights) == sorted(
        f"base_model.model.layers.{i}.self_attn.{p}.lora_{ab}.weight"
        for i in range(2) for p in ("q_proj", "v_proj") for ab in "AB"
    )
    assert weights["base_model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert weights["base_model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (64, 4)
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["bias"] == "none" and config["fan_in_fan_out"] is False and config["lora_dropout"] == 0.0
    assert config["use_rslora"] is False and config["use_dora"] is False
    assert config["task_type"] is None  # TinyTransformer is not a transformers *ForCausalLM
    assert config["target_modules"] == sorted(lora_layers(trained_lora()))  # exact names by default


def test_dora_magnitude_key(tmp_path):
    save_adapter(trained_lora(use_dora=True), tmp_path)
    weights = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    assert weights["base_model.model.layers.1.self_attn.v_proj.lora_magnitude_vector"].shape == (64,)
    assert json.loads((tmp_path / ADAPTER_CONFIG).read_text())["use_dora"] is True


def test_given_target_modules_are_saved_sorted(tmp_path):
    save_adapter(trained_lora(), tmp_path, target_modules=["v_proj", "q_proj"], rank=4, alpha=8)
    assert json.loads((tmp_path / ADAPTER_CONFIG).read_text())["target_modules"] == ["q_proj", "v_proj"]
    regex = r"layers\.\d+\.self_attn\.(q|v)_proj"
    save_adapter(trained_lora(), tmp_path, target_modules=regex)
    assert json.loads((tmp_path / ADAPTER_CONFIG).read_text())["target_modules"] == regex
    assert torch.equal(load_adapter(tiny_model(), tmp_path)(IDS), trained_lora()(IDS))


# ------------------------------------------------------------------------------------------------
# Errors on save
# ------------------------------------------------------------------------------------------------


def test_save_checks_settings_against_the_layers(tmp_path):
    model = trained_lora()
    with pytest.raises(ValueError, match=r"rank=8 was given, but the model's LoRA layers have 4"):
        save_adapter(model, tmp_path, rank=8)
    with pytest.raises(ValueError, match=r"use_dora=True was given"):
        save_adapter(model, tmp_path, use_dora=True)
    with pytest.raises(ValueError, match=r"misses LoRA layers \['layers\.0\.self_attn\.v_proj'"):
        save_adapter(model, tmp_path, target_modules=["q_proj"])
    with pytest.raises(ValueError, match=r"selects layers without LoRA \['layers\.0\.self_attn\.k_proj'"):
        save_adapter(model, tmp_path, target_modules=["q_proj", "k_proj", "v_proj"])
    assert not (tmp_path / ADAPTER_CONFIG).exists()  # nothing written by a refused save


def test_save_refuses_no_lora_and_merged(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers to save"):
        save_adapter(tiny_model(), tmp_path)
    with pytest.raises(ValueError, match=r"merged; unmerge_lora\(model\) before saving"):
        save_adapter(merge_lora(trained_lora()), tmp_path)


def test_save_refuses_mixed_ranks(tmp_path):
    model = apply_lora(tiny_model(), ["q_proj"], 4, 8)
    apply_lora(model, ["v_proj"], 2, 8)
    with pytest.raises(ValueError, match=r"differ in rank \(\[2, 4\]\)"):
        save_adapter(model, tmp_path)


# ------------------------------------------------------------------------------------------------
# Errors on load: they name the key and the shapes, and leave the model untouched
# ------------------------------------------------------------------------------------------------


def test_load_shape_mismatch_names_key_and_shapes(tmp_path):
    save_adapter(trained_lora(), tmp_path)
    small = tiny_model(hidden_size=32)
    with pytest.raises(
        ValueError,
        match=r"'base_model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight' has shape \(4, 64\).*needs \(4, 32\)",
    ):
        load_adapter(small, tmp_path)
    assert not lora_layers(small) and all(p.requires_grad for p in small.parameters())


def test_load_unknown_layer_names_the_key(tmp_path):
    save_adapter(trained_lora(), tmp_path)
    weights = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    weights["base_model.model.layers.7.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 64)
    save_file(weights, str(tmp_path / ADAPTER_WEIGHTS))
    with pytest.raises(ValueError, match=r"weights for \['layers\.7\.self_attn\.q_proj'\]"):
        load_adapter(tiny_model(), tmp_path)


def test_load_missing_tensor_names_it(tmp_path):
    save_adapter(trained_lora(), tmp_path)
    weights = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    del weights["base_model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    save_file(weights, str(tmp_path / ADAPTER_WEIGHTS))
    with pytest.raises(ValueError, match=r"no base_model\.model\.layers\.1\.self_attn\.v_proj\.lora_B\.weight"):
        load_adapter(tiny_model(), tmp_path)


def test_load_targets_missing_from_model(tmp_path):
    save_adapter(trained_lora(), tmp_path, target_modules=["q_proj", "v_proj"])
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    config["target_modules"] = ["query_key_value"]
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"targets \['query_key_value'\], which matches nothing"):
        load_adapter(tiny_model(), tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"peft_type": "IA3"}, r"peft_type is 'IA3'; only 'LORA'"),
        ({"fan_in_fan_out": True}, r"fan_in_fan_out=True is a PEFT feature this loader does not support"),
        ({"rank_pattern": {"q_proj": 8}}, r"rank_pattern=.*not support"),
        ({"r": None}, r"has no 'r'"),
    ],
)
def test_load_refuses_unsupported_configs(tmp_path, change, message):
    save_adapter(trained_lora(), tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    config.update(change)
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_adapter(tiny_model(), tmp_path)


def test_load_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_model(), tmp_path)
    save_adapter(trained_lora(), tmp_path)
    (tmp_path / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapter(tiny_model(), tmp_path)


def test_load_into_a_model_that_already_has_lora(tmp_path):
    save_adapter(trained_lora(), tmp_path)
    with pytest.raises(ValueError, match="only once"):
        load_adapter(trained_lora(), tmp_path)


# ------------------------------------------------------------------- received files are untrusted --
def _rewrite_config(path, **change):
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    config.update(change)
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize("content, words", [
    (b'{"peft_type": "LORA", "r": 4,', "is not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
    (b'["LORA"]', "holds a JSON list; expected an object"),
])
def test_a_corrupt_config_names_the_file(tmp_path, content, words):
    save_adapter(trained_lora(), tmp_path)
    (tmp_path / ADAPTER_CONFIG).write_bytes(content)
    with pytest.raises(ValueError, match=f"{tmp_path / ADAPTER_CONFIG}.*{words}"):
        load_adapter(tiny_model(), tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_safetensors_file_names_the_file(tmp_path, damage):
    save_adapter(trained_lora(), tmp_path)
    path = tmp_path / ADAPTER_WEIGHTS
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a safetensors file" * 4, "truncated": data[:-10], "empty": b""}[damage])
    model = tiny_model()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=f"{path} is not a readable safetensors file.*SafetensorError"):
        load_adapter(model, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is untouched


def test_a_regex_target_modules_still_loads(tmp_path):
    model = trained_lora().eval()
    save_adapter(model, tmp_path, target_modules=r"layers\.\d+\.self_attn\.(q|v)_proj")
    assert torch.equal(load_adapter(tiny_model(), tmp_path).eval()(IDS), model(IDS))


def test_an_over_long_regex_is_refused(tmp_path):
    save_adapter(trained_lora(), tmp_path)
    pattern = "|".join(f"layers\\.{i}\\.self_attn\\.q_proj" for i in range(60))
    assert len(pattern) > adapters.MAX_PATTERN_CHARS
    _rewrite_config(tmp_path, target_modules=pattern)
    with pytest.raises(ValueError, match=rf"{ADAPTER_CONFIG}: target_modules is a regex of {len(pattern)} "
                                         rf"characters; at most {adapters.MAX_PATTERN_CHARS}"):
        load_adapter(tiny_model(), tmp_path)


def test_an_invalid_regex_names_the_file(tmp_path):
    save_adapter(trained_lora(), tmp_path)
    _rewrite_config(tmp_path, target_modules="layers.(")
    with pytest.raises(ValueError, match=f"{ADAPTER_CONFIG}: target_modules 'layers.\\(' is not a valid regex"):
        load_adapter(tiny_model(), tmp_path)


def test_a_pathological_regex_is_refused_instead_of_hanging(tmp_path, monkeypatch):
    # (.*)*@ backtracks exponentially on every module name (5 s for one 25-character name, measured):
    # loading would hang for minutes. The match runs in a child process killed at the limit.
    monkeypatch.setattr(adapters, "MATCH_TIMEOUT_S", 1.0)
    save_adapter(trained_lora(), tmp_path)
    _rewrite_config(tmp_path, target_modules="(.*)*@")
    model = tiny_model()
    with pytest.raises(ValueError, match=r"target_modules '\(\.\*\)\*@' against this model's \d+ module names did "
                                         r"not finish within 1 s.*nested repetition"):
        load_adapter(model, tmp_path)
    assert not lora_layers(model)

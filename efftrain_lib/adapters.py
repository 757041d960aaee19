"""Saving and loading LoRA adapters in PEFT's on-disk format.

A directory holding two files, which `peft.PeftModel.from_pretrained` reads and PEFT's
`save_pretrained` writes:

  adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules, ...
  adapter_model.safetensors  base_model.model.<module path>.lora_A.weight   (r x in)
                             base_model.model.<module path>.lora_B.weight   (out x r)
                             base_model.model.<module path>.lora_magnitude_vector   (out,)  DoRA only

The "base_model.model." prefix is PeftModel's wrapping (PeftModel.base_model is a LoraModel whose
.model is the original); PEFT strips the adapter name ("default") when saving. Only plain LoRA,
rsLoRA and DoRA on Linear layers are supported; other PEFT features are refused with a clear error
rather than loaded wrongly.

A received adapter is untrusted input: a file that is not JSON or not safetensors gets an error that
names the file, and a target_modules regex (PEFT matches a string with re.fullmatch against every
module name) is bounded before this process runs it: at most MAX_PATTERN_CHARS characters, and
matching it against the model's module names must finish within MATCH_TIMEOUT_S seconds in a child
process, killed at the limit. Python's re has no timeout, and a pattern such as `(.*)*@` takes
seconds per name (measured: 5 s for one 25-character name), so loading would otherwise hang.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .lora import ALL_LINEAR, LoRALinear, adapter_tensors, apply_lora, lora_layers, matching_module_names

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "MATCH_TIMEOUT_S", "MAX_PATTERN_CHARS", "load_adapter", "save_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# Bounds on a received target_modules regex (see the module docstring). Real ones are far shorter and
# match a model's names in microseconds; the child process itself starts in well under a second.
MAX_PATTERN_CHARS = 1024
MATCH_TIMEOUT_S = 5.0

# Our attribute -> the suffix PEFT gives that tensor on disk.
_DISK_SUFFIX = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}

# Config keys whose non-default values mean a PEFT feature this loader does not implement.
_UNSUPPORTED = {
    "fan_in_fan_out": False,
    "bias": "none",
    "lora_bias": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "exclude_modules": None,
    "target_parameters": None,
    "layer_replication": None,
    "trainable_token_indices": None,
}


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def _one_setting(layers: dict[str, LoRALinear], attribute: str):
    values = {getattr(layer, attribute) for layer in layers.values()}
    if len(values) > 1:
        raise ValueError(
            f"LoRA layers differ in {attribute} ({sorted(values)}); PEFT's config holds one value per adapter."
        )
    return values.pop()


def _check_given(name: str, given, actual) -> None:
    if given is not None and given != actual:
        raise ValueError(f"save_adapter: {name}={given!r} was given, but the model's LoRA layers have {actual!r}.")


def _default_task_type(model: nn.Module) -> str | None:
    # PEFT's CAUSAL_LM wrapper calls the model with Hugging Face keyword arguments; only a
    # transformers causal LM takes them. Anything else is loaded through the plain PeftModel.
    return "CAUSAL_LM" if type(model).__name__.endswith("ForCausalLM") else None


def _check_targets(model: nn.Module, target_modules, layers: dict[str, LoRALinear]) -> None:
    """The saved target_modules must select exactly our LoRA layers, or PEFT would rebuild others."""
    selected = matching_module_names(model, target_modules)
    extra = [n for n in selected if n not in layers]
    missing = [n for n in layers if n not in selected]
    if extra or missing:
        raise ValueError(
            f"target_modules {target_modules!r} does not select exactly the model's LoRA layers: "
            f"it selects layers without LoRA {extra[:4]} and misses LoRA layers {missing[:4]}."
        )


def adapter_config(
    *,
    target_modules: Union[str, Sequence[str]],
    rank: int,
    alpha: float,
    dropout: float,
    use_rslora: bool,
    use_dora: bool,
    task_type: str | None,
    base_model_name_or_path: str | None,
) -> dict:
    """The adapter_config.json content, with only keys PEFT's LoraConfig knows."""
    targets = target_modules if isinstance(target_modules, str) else sorted(target_modules)
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "target_modules": targets,  # sorted: a set's order would depend on PYTHONHASHSEED
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
        "use_dora": use_dora,
        "init_lora_weights": True,
        "inference_mode": True,
        "revision": None,
        **_UNSUPPORTED,
    }


def save_adapter(
    model: nn.Module,
    directory: Union[str, Path],
    *,
    target_modules: Union[str, Sequence[str], None] = None,
    rank: int | None = None,
    alpha: float | None = None,
    dropout: float | None = None,
    use_rslora: bool | None = None,
    use_dora: bool | None = None,
    base_model_name_or_path: str | None = None,
    task_type: str | None = "auto",
) -> Path:
    """Write the model's LoRA adapter to `directory` in PEFT's format; returns the directory.

    Settings left as None are read from the model's LoRA layers; settings given are checked against
    them (a config that disagrees with the weights would load into a different model). With no
    target_modules the exact names of the LoRA layers are saved, which PEFT matches one to one.
    task_type "auto" writes "CAUSAL_LM" for a transformers *ForCausalLM model, else null.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to save; call apply_lora first.")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"LoRA layers {merged[:4]} are merged; unmerge_lora(model) before saving the adapter.")

    actual = {name: _one_setting(layers, name) for name in ("rank", "alpha", "use_rslora", "use_dora")}
    actual["dropout"] = _one_setting(layers, "dropout_p")
    given = {"rank": rank, "alpha": alpha, "use_rslora": use_rslora, "use_dora": use_dora, "dropout": dropout}
    for name, value in given.items():
        _check_given(name, value, actual[name])
    if target_modules is None:
        target_modules = list(layers)
    _check_targets(model, target_modules, layers)

    config = adapter_config(
        target_modules=target_modules,
        rank=actual["rank"],
        alpha=actual["alpha"],
        dropout=actual["dropout"],
        use_rslora=actual["use_rslora"],
        use_dora=actual["use_dora"],
        task_type=_default_task_type(model) if task_type == "auto" else task_type,
        base_model_name_or_path=base_model_name_or_path,
    )
    tensors = {
        f"{PEFT_PREFIX}{name}.{_DISK_SUFFIX[attr]}": tensor.detach().contiguous().cpu()
        for name, layer in layers.items()
        for attr, tensor in adapter_tensors(layer).items()
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory



# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _read_config(directory: Path) -> dict:
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"No {ADAPTER_CONFIG} in {directory}: not a PEFT adapter directory.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected PEFT's adapter_config.json.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}; expected an object (PEFT's adapter_config.json).")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {config.get('peft_type')!r}; only 'LORA' adapters can be loaded.")
    for key in ("r", "lora_alpha", "target_modules"):
        if config.get(key) is None:
            raise ValueError(f"{path}: the LoRA config has no {key!r}.")
    for key, default in _UNSUPPORTED.items():
        value = config.get(key, default)
        if not _is_default(value, default):
            raise ValueError(
                f"{path}: {key}={value!r} is a PEFT feature this loader does not support "
                f"(supported: {key}={default!r}). Load this adapter with peft.PeftModel.from_pretrained."
            )
    return config


def _check_pattern_is_bounded(path: Path, model: nn.Module, pattern) -> None:
    """A regex target_modules must be short and match this model's names in bounded time (see the top)."""
    if not isinstance(pattern, str) or pattern.lower() == ALL_LINEAR:
        return  # a list of names is compared with == and endswith, never run as a regex
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"{path}: target_modules is a regex of {len(pattern)} characters; at most "
                         f"{MAX_PATTERN_CHARS} are accepted (list the module names instead).")
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{path}: target_modules {pattern!r} is not a valid regex: {error}.") from None
    names = [name for name, _ in model.named_modules() if name]
    child = "import json, re, sys; p, names = json.load(sys.stdin); [re.fullmatch(p, n) for n in names]"
    try:
        subprocess.run([sys.executable, "-I", "-c", child], input=json.dumps([pattern, names]), text=True,
                       capture_output=True, timeout=MATCH_TIMEOUT_S, check=True)
    except subprocess.TimeoutExpired:
        raise ValueError(
            f"{path}: matching target_modules {pattern!r} against this model's {len(names)} module names did not "
            f"finish within {MATCH_TIMEOUT_S:g} s, so it is refused: a regex with nested repetition such as "
            "(a+)+ or (.*)* backtracks exponentially. Use a plain regex or a list of module names."
        ) from None


def _is_default(value, default) -> bool:
    # PEFT writes "no such feature" as null, {} or [] depending on the key and the version.
    empty = (None, {}, [])
    return value == default or (value in empty and default in empty)


def _split_key(key: str) -> tuple[str, str]:
    """'base_model.model.X.lora_A.weight' -> ('X', 'lora_A'); a clear error for anything else."""
    if not key.startswith(PEFT_PREFIX):
        raise ValueError(f"Adapter key {key!r} does not start with {PEFT_PREFIX!r}, as PEFT's keys do.")
    rest = key[len(PEFT_PREFIX):]
    for attr, suffix in _DISK_SUFFIX.items():
        if rest.endswith("." + suffix):
            return rest[: -len(suffix) - 1], attr
    raise ValueError(
        f"Adapter key {key!r} is not a LoRA tensor; expected names ending in {sorted(_DISK_SUFFIX.values())}."
    )


def _expected_shapes(base: nn.Linear, rank: int, use_dora: bool) -> dict[str, tuple[int, ...]]:
    shapes = {"lora_A": (rank, base.in_features), "lora_B": (base.out_features, rank)}
    if use_dora:
        shapes["magnitude"] = (base.out_features,)
    return shapes


def _check_weights(model: nn.Module, targets: list[str], weights: dict, config: dict) -> dict:
    """Match the file's tensors to the targeted layers: names and shapes, before the model changes."""
    by_layer: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in weights.items():
        layer_name, attr = _split_key(key)
        by_layer.setdefault(layer_name, {})[attr] = (key, tensor)
    unknown = [name for name in by_layer if name not in targets]
    if unknown:
        raise ValueError(
            f"Adapter has weights for {unknown[:4]}, which the model does not have or target_modules "
            f"{config['target_modules']!r} does not select. Layers selected in this model: {targets[:4]}."
        )
    modules = dict(model.named_modules())
    for name in targets:
        expected = _expected_shapes(modules[name], config["r"], bool(config.get("use_dora", False)))
        found = by_layer.get(name, {})
        surplus = [key for attr, (key, _) in found.items() if attr not in expected]
        if surplus:
            raise ValueError(
                f"Adapter tensor {surplus[0]!r} is not part of this config (use_dora={config.get('use_dora', False)})."
            )
        for attr, shape in expected.items():
            if attr not in found:
                raise ValueError(f"Adapter has no {PEFT_PREFIX}{name}.{_DISK_SUFFIX[attr]} for the targeted layer {name!r}.")
            key, tensor = found[attr]
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"Adapter tensor {key!r} has shape {tuple(tensor.shape)}, but layer {name!r} "
                    f"(Linear {modules[name].in_features} -> {modules[name].out_features}, r={config['r']}) "
                    f"needs {shape}."
                )
    return by_layer


def load_adapter(model: nn.Module, directory: Union[str, Path]) -> nn.Module:
    """Apply the LoRA adapter saved in `directory` (ours or PEFT's save_pretrained) to `model`.

    Everything is checked (config, key names, shapes) before the model is changed. Returns the
    model, with LoRA applied, the saved weights loaded and every other parameter frozen.
    """
    directory = Path(directory)
    config = _read_config(directory)
    weights_path = directory / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"No {ADAPTER_WEIGHTS} in {directory} (only safetensors adapters are supported).")
    try:
        weights = load_file(str(weights_path))
    except Exception as error:  # safetensors raises its own SafetensorError, which names no file
        raise ValueError(f"{weights_path} is not a readable safetensors file ({type(error).__name__}: {error}).") from None
    target_modules = config["target_modules"]
    _check_pattern_is_bounded(directory / ADAPTER_CONFIG, model, target_modules)
    targets = matching_module_names(model, target_modules)
    if not targets:
        # apply_lora below would say the same; this way the message names the adapter too.
        raise ValueError(f"The adapter in {directory} targets {target_modules!r}, which matches nothing in this model.")
    by_layer = _check_weights(model, targets, weights, config)

    apply_lora(
        model,
        target_modules,
        rank=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout", 0.0),
        use_rslora=bool(config.get("use_rslora", False)),
        use_dora=bool(config.get("use_dora", False)),
    )
    layers = lora_layers(model)
    with torch.no_grad():
        for name in targets:
            params = adapter_tensors(layers[name])
            for attr, (_, tensor) in by_layer[name].items():
                params[attr].copy_(tensor.to(dtype=params[attr].dtype, device=params[attr].device))
    return model

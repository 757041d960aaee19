"""Reference models and the bridge to PEFT, for checking our LoRA against the real one.

A tiny `transformers.LlamaForCausalLM` built from a `LlamaConfig` (no download, seeded, a few hundred
thousand parameters), and helpers that pair our LoRA layers with PEFT's so a notebook or a test can
give both the same A and B and show equal outputs and gradients.

transformers and peft are imported inside the functions: `efftrain_lib.lora` and the rest of the
library must import on a machine that has neither (they are the `reference` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import torch
import torch.nn as nn

from .lora import adapter_tensors, lora_layers

if TYPE_CHECKING:  # for annotations only; never imported at run time here
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "copy_lora_weights",
    "copy_lora_weights_from_peft",
    "paired_lora_parameters",
    "peft_lora_model",
    "tiny_llama",
    "tiny_llama_config",
]

# PEFT's name for the adapter it creates when none is given.
PEFT_ADAPTER = "default"
# PeftModel wraps the base model twice: PeftModel.base_model (LoraModel) .model (the original).
PEFT_PREFIX = "base_model.model."

_TINY_LLAMA = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    tie_word_embeddings=False,  # an untied lm_head, like TinyTransformer: "all-linear" skips it
    attention_dropout=0.0,
)


def tiny_llama_config(**overrides) -> "LlamaConfig":
    """A LlamaConfig small enough for a CPU test: vocab 128, hidden 64, 2 layers, 4 heads."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**_TINY_LLAMA, **overrides})


def tiny_llama(seed: int = 0, **overrides) -> "LlamaForCausalLM":
    """A randomly initialised tiny LlamaForCausalLM; the same seed gives the same weights.

    Two calls with one seed give two identical, independent models: one for our LoRA and one for
    PEFT's (get_peft_model changes the model it is given in place).
    """
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(**overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def peft_lora_model(
    model: nn.Module,
    target_modules: Union[str, Sequence[str]],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    *,
    use_rslora: bool = False,
    use_dora: bool = False,
    task_type: str | None = None,
) -> "PeftModel":
    """PEFT's LoRA on `model` (in place), with the same arguments as our apply_lora."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        use_rslora=use_rslora,
        use_dora=use_dora,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def _peft_layer_tensors(module: nn.Module) -> dict[str, nn.Parameter]:
    """A PEFT LoRA layer's adapter tensors under our attribute names."""
    tensors = {
        "lora_A": module.lora_A[PEFT_ADAPTER].weight,
        "lora_B": module.lora_B[PEFT_ADAPTER].weight,
    }
    magnitude = getattr(module, "lora_magnitude_vector", None)
    if magnitude is not None and PEFT_ADAPTER in magnitude:
        tensors["magnitude"] = magnitude[PEFT_ADAPTER].weight
    return tensors



def paired_lora_parameters(ours: nn.Module, peft_model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """(name, our parameter, PEFT's parameter) for every adapter tensor, e.g. 'model.layers.0.self_attn.q_proj.lora_A'.

    Fails if the two models do not hold LoRA on the same layers with the same shapes, so a
    comparison can never silently skip a layer.
    """
    peft_modules = dict(peft_model.named_modules())
    pairs = []
    layers = lora_layers(ours)
    if not layers:
        raise ValueError("The first model has no LoRA layers; call apply_lora on it first.")
    for name, layer in layers.items():
        peft_name = PEFT_PREFIX + name
        peft_layer = peft_modules.get(peft_name)
        if peft_layer is None or not hasattr(peft_layer, "lora_A"):
            raise ValueError(f"PEFT model has no LoRA layer {peft_name!r} to pair with our {name!r}.")
        theirs = _peft_layer_tensors(peft_layer)
        for key, param in adapter_tensors(layer).items():
            if key not in theirs:
                raise ValueError(f"PEFT layer {peft_name!r} has no {key} (DoRA on one side only?).")
            if theirs[key].shape != param.shape:
                raise ValueError(
                    f"{name}.{key}: our shape {tuple(param.shape)} differs from PEFT's {tuple(theirs[key].shape)}."
                )
            pairs.append((f"{name}.{key}", param, theirs[key]))
    peft_count = sum(1 for n, m in peft_modules.items() if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict))
    if peft_count != len(layers):
        raise ValueError(f"PEFT model has {peft_count} LoRA layers, ours has {len(layers)}.")
    return pairs


@torch.no_grad()
def copy_lora_weights(ours: nn.Module, peft_model: nn.Module) -> None:
    """Give the PEFT model our A, B (and DoRA magnitude), so both compute the same function."""
    for _, our_param, peft_param in paired_lora_parameters(ours, peft_model):
        peft_param.copy_(our_param)


@torch.no_grad()
def copy_lora_weights_from_peft(peft_model: nn.Module, ours: nn.Module) -> None:
    """The reverse: give our model PEFT's adapter tensors."""
    for _, our_param, peft_param in paired_lora_parameters(ours, peft_model):
        our_param.copy_(peft_param)

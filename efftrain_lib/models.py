"""The tiny LLaMA-style decoder every chapter trains.

Module names follow Hugging Face's LlamaForCausalLM (embed_tokens, layers.N.self_attn.q_proj ...,
layers.N.mlp.gate_proj/up_proj/down_proj, norm, lm_head), so that LoRA target names such as
["q_proj", "v_proj"] mean the same thing here as in PEFT. It is small enough to train on a CPU
in seconds, and real: causal attention, RMSNorm, a SwiGLU MLP, tied-free lm_head.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import language_model_loss  # noqa: F401  (the loss every chapter trains with; defined there)


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 96
    hidden_size: int = 64
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 172
    max_seq_len: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TinyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under autocast: the mean of squares overflows/loses precision in 16 bits.
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, config: TinyConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.hidden_size // config.n_heads
        self.dropout = config.dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, dim))


class MLP(nn.Module):
    """LLaMA's SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: TinyConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x)))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class TinyTransformer(nn.Module):
    """A decoder-only language model: token ids [batch, seq] -> logits [batch, seq, vocab]."""

    def __init__(self, config: TinyConfig = TinyConfig()):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_seq_len, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        if seq > self.config.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds max_seq_len {self.config.max_seq_len}")
        positions = torch.arange(seq, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


PRETRAINED_CHECKPOINT = Path(__file__).parent / "data" / "tiny_pretrained.safetensors"


def load_pretrained(**config_overrides) -> TinyTransformer:
    """The tiny transformer pretrained on the sonnets (scripts/pretrain_tiny.py reproduces it).

    It was pretrained with dropout 0.2; fine-tuning defaults to dropout 0.0 so that runs compare
    exactly. Override any TinyConfig field that does not change a weight's shape.
    """
    from safetensors.torch import load_file

    meta = json.loads(PRETRAINED_CHECKPOINT.with_suffix(".json").read_text())
    config = TinyConfig(**{**meta["config"], "dropout": 0.0, **config_overrides})
    model = TinyTransformer(config)
    model.load_state_dict(load_file(PRETRAINED_CHECKPOINT))
    return model


@torch.no_grad()
def generate(model: TinyTransformer, prompt_ids: torch.Tensor, new_tokens: int,
             temperature: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Continue a 1-D tensor of token ids. temperature 0 is greedy; otherwise sampled with a seeded
    generator, so the same call gives the same text (outputs can be compared across models)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = prompt_ids.to(device)[None]
    for _ in range(new_tokens):
        logits = model(ids[:, -model.config.max_seq_len:])[:, -1].float().cpu()
        if temperature == 0:
            next_id = logits.argmax(-1, keepdim=True)
        else:
            next_id = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
        ids = torch.cat([ids, next_id.to(device)], dim=1)
    model.train(was_training)
    return ids[0].cpu()

"""The course's small texts, a character tokenizer, and reproducible batches.

Characters, not sub-words: a 96-symbol vocabulary keeps the embedding and output layers small, so the
tiny transformer's parameters sit where LoRA acts (the attention and MLP projections).
"""

from __future__ import annotations

from importlib import resources
from typing import Callable

import torch

# Newline plus the 95 printable ASCII characters. Anything else is mapped to '?'.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(VOCAB)
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}
_UNKNOWN = _INDEX["?"]

TEXTS = {
    "sonnets": "sonnets.txt",
    "founding_documents": "founding_documents.txt",
}


def encode(text: str) -> torch.Tensor:
    """Text -> int64 token ids."""
    return torch.tensor([_INDEX.get(ch, _UNKNOWN) for ch in text], dtype=torch.long)


def decode(ids) -> str:
    """Token ids -> text."""
    return "".join(VOCAB[int(i)] for i in ids)


def load_text(name: str) -> str:
    """One of the course's texts by name: 'sonnets' or 'founding_documents'."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; available: {sorted(TEXTS)}")
    return resources.files(__package__).joinpath(TEXTS[name]).read_text(encoding="utf-8")


def split_tokens(tokens: torch.Tensor, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """A contiguous train/validation split (the tail is validation: no overlap of windows)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    cut = int(len(tokens) * train_fraction)
    return tokens[:cut], tokens[cut:]


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.arange(seq_len + 1)
    chunks = tokens[starts[:, None] + offsets]
    return chunks[:, :-1], chunks[:, 1:]


def batch_sampler(
    tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """get_batch(step) -> (inputs, targets), each [batch_size, seq_len], random windows of `tokens`.

    The batch of step s depends only on (seed, s), not on how many batches were drawn before:
    two runs that should see the same data (full fine-tuning vs LoRA) do.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    if len(tokens) <= seq_len:
        raise ValueError(f"text of {len(tokens)} tokens is too short for seq_len {seq_len}")

    def get_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=generator)
        return _windows(tokens, starts, seq_len)

    return get_batch


def fixed_batches(
    tokens: torch.Tensor, n_batches: int, batch_size: int, seq_len: int, seed: int = 1234
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of batches, for evaluation that compares runs on identical data."""
    get_batch = batch_sampler(tokens, batch_size, seq_len, seed)
    return [get_batch(i) for i in range(n_batches)]

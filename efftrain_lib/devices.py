"""Device, dtype and seeding helpers shared by every chapter.

CUDA when present, else CPU. On CPU the low-precision autocast dtype is bf16: fp16 matmuls on
a CPU are tens of times slower than fp32, and CPU autocast defaults to bf16 anyway.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def get_device(prefer: str | None = None) -> torch.device:
    """The device to run on: `prefer` if given ("cpu", "cuda"), else CUDA when present, else CPU."""
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUDA was requested but torch.cuda.is_available() is False; use 'cpu'.")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def low_precision_dtype(device: torch.device | str) -> torch.dtype:
    """The 16-bit dtype autocast should use on `device`.

    bf16 on CPU and on GPUs that support it (no loss scaling needed); fp16 on older GPUs.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


AUTOCAST_DTYPES = (None, torch.float16, torch.bfloat16)


def check_autocast_dtype(dtype) -> torch.dtype | None:
    """The course spells mixed precision one way: `autocast_dtype`, None for fp32 (no autocast)."""
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype must be None (fp32), torch.float16 or torch.bfloat16, got {dtype!r}")
    return dtype


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """torch.autocast on `device` in `dtype`, or no autocast at all when dtype is None (fp32)."""
    if check_autocast_dtype(dtype) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)


def use_one_cpu_thread(device: torch.device | str = "cpu") -> None:
    """On CPU, run torch's ops on one thread; on a GPU, change nothing.

    The course's models are tiny: splitting their ops across threads buys ~25% on an idle machine, but on
    a busy one a parallel op waits for its slowest (descheduled) thread, and steps got 3-10x slower and
    far noisier with 2 threads on the course's 2-core machine (measured while writing chapters 2-4).
    Timings that compare two techniques need steady more than fast.
    """
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)


def describe(device: torch.device | str) -> str:
    """One line naming the device, for notebook headers."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    threads = torch.get_num_threads()
    return f"cpu: {threads} thread{'' if threads == 1 else 's'}, torch {torch.__version__}"

"""Benchmark: our checkpoint against torch.utils.checkpoint, and the recompute overhead of the sqrt(n) plan.

    python benchmarks/checkpointing.py [--device cpu|cuda] [--layers 16] [--dim 128] [--tokens 8x128]
                                       [--repeats 21] [--threads 1]

On the tiny LLaMA-style transformer (n layers), one training step is forward + backward of the language
model loss. Prints, each a median of per-round ratios over repeated timed rounds in one process (after
warm-up, the two sides alternating which goes first; see benchmarks/lora.py), with its target:
  1. ours / torch   every layer checkpointed by efftrain_lib.checkpointing.checkpoint, over the same plan
                    with torch.utils.checkpoint(use_reentrant=False). The activation bytes kept after forward
                    are printed for both and must be equal. Target <= 1.05.
  2. sqrt(n) plan   checkpoint every sqrt(n) layers (ours) over no checkpointing: the recompute overhead.
                    One extra forward of the layers is expected, i.e. about the forward's share of a step
                    (printed, measured); ~+33% in FLOPs (2PD of 6PD). Target <= 1.45.
--threads 1 by default: these are small matmuls, and on a shared CPU two threads waiting for each other make
timings several times slower and noisier (measured on the course machine). Not part of the test run.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from benchmarks.lora import report  # noqa: E402
from efftrain_lib.timing import median_ratio  # noqa: E402  (the shared timing protocol)
from efftrain_lib.checkpointing import enable_checkpointing  # noqa: E402
from efftrain_lib.checkpointing_explorer import deep_config, token_batch  # noqa: E402
from efftrain_lib.devices import describe, get_device  # noqa: E402
from efftrain_lib.meter import MIB, SavedTensorCounter  # noqa: E402
from efftrain_lib.models import TinyTransformer, language_model_loss  # noqa: E402

RATIO_TARGET = 1.05
OVERHEAD_TARGET = 1.45


def step_fn(model, batch):
    inputs, targets = batch

    def step():
        language_model_loss(model(inputs), targets).backward()
        for p in model.parameters():
            p.grad = None

    return step


def kept_bytes(model, batch) -> int:
    """Activation bytes saved for backward at the end of forward (exact CPU accounting; on CUDA too,
    restricted to the model's device)."""
    with SavedTensorCounter(model, device=next(model.parameters()).device) as counter:
        loss = language_model_loss(model(batch[0]), batch[1])
        kept = counter.activation_bytes
        del loss
    return kept


def forward_share(model, batch, device, repeats: int) -> float:
    shares = []
    for _ in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = language_model_loss(model(batch[0]), batch[1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        middle = time.perf_counter()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        shares.append((middle - start) / (time.perf_counter() - start))
    model.zero_grad(set_to_none=True)
    return statistics.median(shares[2:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", default="8x128", help="batch x sequence, e.g. 8x128")
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds; the median is reported")
    parser.add_argument("--inner", type=int, default=1, help="steps per timed round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    batch_size, seq = (int(n) for n in args.tokens.lower().split("x"))
    config = deep_config(n_layers=args.layers, hidden_size=args.dim, seq=seq)
    every = max(1, round(math.sqrt(args.layers)))
    torch.manual_seed(0)
    base = TinyTransformer(config).to(device)
    batch = tuple(t.to(device) for t in token_batch(config, batch_size))

    plain = base
    ours = enable_checkpointing(copy.deepcopy(base), 1, impl="ours")
    theirs = enable_checkpointing(copy.deepcopy(base), 1, impl="torch")
    sqrt_plan = enable_checkpointing(copy.deepcopy(base), every, impl="ours")

    print(f"device: {describe(device)}")
    print(f"model: {args.layers} layers, dim {args.dim}, ffn {config.ffn_dim}, {config.n_heads} heads; "
          f"batch {batch_size} x {seq} tokens, fp32")
    print(f"each ratio: median of per-round ratios over {args.repeats} rounds of {args.inner} step(s), after warm-up")
    kept = {name: kept_bytes(m, batch) for name, m in
            [("plain", plain), ("ours", ours), ("torch", theirs), ("sqrt", sqrt_plan)]}
    print(f"kept after forward: no checkpointing {kept['plain'] / MIB:.2f} MiB; every layer: ours "
          f"{kept['ours'] / MIB:.3f} MiB, torch.utils.checkpoint {kept['torch'] / MIB:.3f} MiB "
          f"({'equal' if kept['ours'] == kept['torch'] else 'NOT EQUAL'}); every {every}: {kept['sqrt'] / MIB:.3f} MiB")
    ok = kept["ours"] == kept["torch"]

    ok &= report("ours / torch.utils.checkpoint", median_ratio(step_fn(ours, batch), step_fn(theirs, batch), device,
                                                               args.repeats, args.inner), RATIO_TARGET)
    share = forward_share(plain, batch, device, args.repeats)
    result = median_ratio(step_fn(sqrt_plan, batch), step_fn(plain, batch), device, args.repeats, args.inner)
    ok &= report(f"sqrt(n) plan (every {every}) / plain", result, OVERHEAD_TARGET)
    print(f"recompute overhead at the sqrt(n) plan: {result[2] - 1:+.1%} (forward share of a plain step: "
          f"{share:.1%}, the overhead one extra forward predicts; FLOPs: +33.3%)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

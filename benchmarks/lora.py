"""Benchmark: our LoRALinear against PEFT's LoRA Linear, and merged inference against a plain Linear.

    python benchmarks/lora.py [--device cpu|cuda] [--dim 1024] [--rank 8] [--tokens 16x128] [--repeats 31]

Prints two ratios, each a median over repeated timed runs in one process (after warm-up), with the
target it is held to:
  1. train step   forward + backward of our LoRALinear / the same for PEFT's lora.Linear, same
                  shapes, same weights, input requiring grad (a layer in the middle of a network).
                  Target <= 0.95: the hardened layer must not cost more than PEFT's.
  2. merged       forward of our merged LoRALinear / forward of a plain nn.Linear (inference mode).
                  Target <= 1.02: after merging, the forward must be the base Linear and nothing else.
The two sides of each ratio are timed in alternating order, round by round, so drifts in machine\nload hit both alike; the figure is the median of the per-round ratios.
Not part of the test run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from efftrain_lib.devices import describe, get_device  # noqa: E402
from efftrain_lib.timing import median_ratio  # noqa: E402  (the shared timing protocol)
from efftrain_lib.lora import LoRALinear  # noqa: E402

TRAIN_TARGET = 0.95
MERGED_TARGET = 1.02


def peft_lora_linear(base: nn.Linear, rank: int, alpha: float) -> nn.Module:
    """PEFT's lora.Linear around `base`, built the way get_peft_model builds it."""
    from peft import LoraConfig, get_peft_model

    holder = nn.Module()
    holder.proj = base
    model = get_peft_model(holder, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"]))
    return model.base_model.model.proj


def train_step_fn(layer: nn.Module, x: torch.Tensor, params: list[torch.Tensor]):
    def step():
        for p in params:
            p.grad = None
        x.grad = None
        layer(x).sum().backward()

    return step


def bench_train_step(dim: int, rank: int, tokens: tuple[int, int], device, repeats: int, inner: int):
    torch.manual_seed(0)
    ours = LoRALinear(nn.Linear(dim, dim).to(device), rank, alpha=2 * rank)
    with torch.no_grad():
        ours.lora_B.normal_(0, 0.02)  # a trained-looking B, so no path is all zeros
    ref = peft_lora_linear(nn.Linear(dim, dim).to(device), rank, alpha=2 * rank)
    with torch.no_grad():
        ref.base_layer.load_state_dict(ours.base.state_dict())
        ref.lora_A["default"].weight.copy_(ours.lora_A)
        ref.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(*tokens, dim, device=device, requires_grad=True)
    return median_ratio(
        train_step_fn(ours, x, [ours.lora_A, ours.lora_B]),
        train_step_fn(ref, x, [ref.lora_A["default"].weight, ref.lora_B["default"].weight]),
        device, repeats, inner,
    )


def bench_merged(dim: int, rank: int, tokens: tuple[int, int], device, repeats: int, inner: int):
    torch.manual_seed(0)
    plain = nn.Linear(dim, dim).to(device)
    ours = LoRALinear(nn.Linear(dim, dim).to(device), rank, alpha=2 * rank)
    ours.merge()
    x = torch.randn(*tokens, dim, device=device)

    def forward(layer):
        def run():
            with torch.inference_mode():
                layer(x)

        return run

    return median_ratio(forward(ours), forward(plain), device, repeats, inner)


def report(name: str, result: tuple[float, float, float], target: float) -> bool:
    ours, ref, ratio = result
    ok = ratio <= target
    print(
        f"{name:<34} ours {ours * 1e3:8.3f} ms  reference {ref * 1e3:8.3f} ms  "
        f"ratio {ratio:.3f}  (target <= {target:.2f})  {'PASS' if ok else 'MISS'}"
    )
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--tokens", default="16x128", help="batch x sequence, e.g. 16x128")
    parser.add_argument("--repeats", type=int, default=31, help="timed rounds; the median is reported")
    parser.add_argument("--inner", type=int, default=1, help="calls per timed round")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    tokens = tuple(int(n) for n in args.tokens.lower().split("x"))
    import peft

    print(f"device: {describe(device)}, peft {peft.__version__}")
    print(f"shapes: Linear {args.dim} -> {args.dim}, rank {args.rank}, input {tokens[0]}x{tokens[1]}x{args.dim} fp32")
    print(
        f"each ratio: median of per-round ratios over {args.repeats} rounds (merged: {3 * args.repeats}) "
        f"of {args.inner} call(s), after warm-up"
    )
    ok = report(
        "train step (fwd+bwd) vs PEFT",
        bench_train_step(args.dim, args.rank, tokens, device, args.repeats, args.inner),
        TRAIN_TARGET,
    )
    ok &= report(
        "merged forward vs nn.Linear",
        # A forward alone is cheap, and this ratio sits next to its target: take 3x the rounds.
        bench_merged(args.dim, args.rank, tokens, device, 3 * args.repeats, args.inner),
        MERGED_TARGET,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

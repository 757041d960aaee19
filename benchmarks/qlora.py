"""Benchmark: QLoRA's 4-bit base, ours against torchao and against LoRA on a bf16 base.

    python benchmarks/qlora.py [--device cpu|cuda] [--size 2048] [--tokens 1024] [--repeats 11] [--threads 1]

One run prints, with its targets (ratios measured in the same run, interleaved rounds: efftrain_lib.timing):
  1. quantize     NF4 + double quantization of a size x size fp32 weight, ours (QuantizedTensor.quantize) /
                  torchao's to_nf4, median of per-round ratios <= 1.0 (a binary search beats torchao's
                  distance-to-every-code argmin), and the stored bytes equal
  2. dequantize   ours (QuantizedTensor.dequantize) / torchao's get_original_weight <= 1.5
  3. QLoRA layer  forward + backward of QLoRALinear (NF4 base, bf16 compute, bf16 adapters) / LoRALinear on a
                  bf16 base of the same shape, on `tokens` x size inputs: the dequantize overhead, <= 3.0 on a CPU
                  (two dequantizes per step against one bf16 matmul per pass; on a GPU fused kernels shrink it)
  4. bytes        the tiny model's quantized base in each format, measured from the stored tensors, equal to
                  efftrain_lib.quant_math.blockwise_bytes (exact) and within 5% of the asymptotic bits per parameter
Not part of the test run. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from efftrain_lib.devices import describe, get_device  # noqa: E402
from efftrain_lib.lora import LoRALinear  # noqa: E402
from efftrain_lib.models import load_pretrained  # noqa: E402
from efftrain_lib.nf4_reference import torchao_nf4_module  # noqa: E402
from efftrain_lib.qlora import QLoRALinear, apply_qlora, quantized_layers  # noqa: E402
from efftrain_lib.quant_math import bits_per_parameter, blockwise_bytes  # noqa: E402
from efftrain_lib.quantization import QuantizedTensor  # noqa: E402
from efftrain_lib.timing import median_ratio  # noqa: E402

QUANTIZE_TARGET, DEQUANTIZE_TARGET, LAYER_TARGET, FORMULA_SLACK = 1.0, 1.5, 3.0, 0.05


def line(name: str, value: float, target: float, detail: str) -> bool:
    ok = value <= target
    print(f"{name:<34} {value:8.3f}  (target <= {target:g})  {'PASS' if ok else 'MISS'}  {detail}")
    return ok


def quantize_checks(size: int, device, repeats: int) -> bool:
    nf4 = torchao_nf4_module()
    weight = (torch.randn(size, size, generator=torch.Generator().manual_seed(0)) * 0.02).to(device)
    table = nf4.to_nf4(weight, 64, 256).nf4  # torchao's own table, so both store the same codes
    ours = QuantizedTensor.quantize(weight, table, block_size=64, double_quant_block=256)
    theirs = nf4.to_nf4(weight, 64, 256)
    same = torch.equal(ours.dequantize(), theirs.get_original_weight())
    stored = sum(t.numel() * t.element_size() for t in (theirs.quantized_data, theirs.quantized_scalers,
                                                         theirs.quantization_factor, theirs.scaler_mean))
    q_ours, q_ref, q_ratio = median_ratio(lambda: QuantizedTensor.quantize(weight, table, block_size=64,
                                                                           double_quant_block=256),
                                          lambda: nf4.to_nf4(weight, 64, 256), device, repeats, 1)
    d_ours, d_ref, d_ratio = median_ratio(ours.dequantize, theirs.get_original_weight, device, repeats, 1)
    mvals = weight.numel() / 1e6
    ok = line("1. quantize, ours / torchao", q_ratio, QUANTIZE_TARGET,
              f"{mvals / q_ours:.0f} vs {mvals / q_ref:.0f} Mvalues/s; dequantized equal: {same}; "
              f"bytes {ours.nbytes:,} vs {stored:,}")
    ok &= same and ours.nbytes == stored
    ok &= line("2. dequantize, ours / torchao", d_ratio, DEQUANTIZE_TARGET,
               f"{mvals / d_ours:.0f} vs {mvals / d_ref:.0f} Mvalues/s")
    return ok


def layer_check(size: int, tokens: int, device, repeats: int) -> bool:
    torch.manual_seed(0)
    base = nn.Linear(size, size, bias=False, device=device)
    qlora = QLoRALinear(base, 16, 32, adapter_dtype=torch.bfloat16)
    lora = LoRALinear(nn.Linear(size, size, bias=False, device=device).to(torch.bfloat16), 16, 32)
    x = torch.randn(tokens, size, device=device, dtype=torch.bfloat16, requires_grad=True)

    def step(layer):
        layer.zero_grad(set_to_none=True)
        layer(x).float().square().mean().backward()

    ours, ref, ratio = median_ratio(lambda: step(qlora), lambda: step(lora), device, repeats, 1)
    return line("3. QLoRALinear / LoRA on bf16 base", ratio, LAYER_TARGET,
                f"fwd+bwd {1e3 * ours:.1f} vs {1e3 * ref:.1f} ms ({tokens} x {size} @ {size} x {size}, bf16)")


def bytes_check() -> bool:
    ok = True
    model = load_pretrained()
    fp32 = sum(m.weight.numel() * 4 for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head")
    print(f"4. the tiny model's base (its 28 decoder Linears): fp32 {fp32:,} B, bf16 {fp32 // 2:,} B")
    for code, dq in (("nf4", False), ("nf4", True), ("int4", True), ("fp4", True), ("int8", False)):
        model = apply_qlora(load_pretrained(), 4, 8, code=code, double_quant=dq)
        layers = list(quantized_layers(model).values())
        measured = sum(layer.weight_nbytes for layer in layers)
        bits = 8 if code == "int8" else 4
        formula = sum(blockwise_bytes(layer.in_features * layer.out_features, bits, 64, 256 if dq else None)
                      for layer in layers)
        numel = sum(layer.in_features * layer.out_features for layer in layers)
        asymptotic = bits_per_parameter(bits, 64, double_quant_block=256 if dq else None)
        measured_bits = 8 * measured / numel
        exact = measured == formula
        close = abs(measured_bits / asymptotic - 1) <= FORMULA_SLACK
        ok &= exact and close
        print(f"   {code + (' + double quant' if dq else ''):<20} {measured:>8,} B  {measured_bits:.3f} bits/param  "
              f"formula {formula:,} B ({'equal' if exact else 'DIFFERENT'}), asymptotic {asymptotic:.3f} "
              f"({'within' if close else 'beyond'} {FORMULA_SLACK:.0%})  {'PASS' if exact and close else 'MISS'}")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--size", type=int, default=2048, help="the square weight's side (a multiple of 128)")
    parser.add_argument("--tokens", type=int, default=1024, help="rows of the layer benchmark's input")
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads (default 1: steadier on a shared machine; 0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.size % 128:
        parser.error("--size must be a multiple of 128 (blocks of 64, groups of 256 scales)")
    device = get_device(args.device)
    print(f"efftrain QLoRA benchmark | {describe(device)} | torch {torch.__version__}")
    print(f"weight {args.size} x {args.size} fp32, NF4 block 64, scales double-quantized in groups of 256; "
          f"{args.repeats} interleaved rounds\n")
    ok = quantize_checks(args.size, device, args.repeats)
    ok &= layer_check(args.size, args.tokens, device, args.repeats)
    ok &= bytes_check()
    print("\nall targets met" if ok else "\nsome targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The figures of chapters 2 to 4 (checkpointing, mixed precision, accumulation): see
efftrain_lib/drill/figures_registry.py."""

from __future__ import annotations

import math

import torch

from efftrain_lib.drill.figures_registry import CITED, COMPUTED, figure
from efftrain_lib.memory import estimate_training_memory
from efftrain_lib.memory_advisor import time_factor
from efftrain_lib.number_formats import format_info

#: PCIe 4.0 x16, one direction: 16 GT/s per lane x 16 lanes, 128b/130b encoding, 8 bits per byte
PCIE4_X16_BYTES_PER_S = 16e9 * 16 * 128 / 130 / 8

# ------------------------------------------------------------------------------------------------
# Chapter 2: gradient checkpointing
# ------------------------------------------------------------------------------------------------

@figure("ckpt-extra-compute", COMPUTED, "memory_advisor.time_factor(checkpointing=True, ...) - 1: one extra forward "
        "(2PD) on a 6PD step")
def _ckpt_extra_compute():
    extra = time_factor(True, False, False) - 1
    lora = time_factor(True, True, False) / time_factor(False, True, False) - 1
    return 100 * extra, {"under LoRA (a 4PD step)": 100 * lora, "a whole extra step": 100}


@figure("ckpt-sqrt-n-64", COMPUTED, "k = sqrt(64) checkpoints + 64 / k layers of the segment being recomputed")
def _ckpt_sqrt_n():
    k = math.isqrt(64)
    return k + 64 // k, {"the checkpoints only": k, "no checkpointing (every layer)": 64}


@figure("ckpt-lora-recompute-cost", COMPUTED, """memory_advisor.time_factor(checkpointing=True, lora=True) /
        time_factor(checkpointing=False, lora=True) - 1: one extra forward (2PD) on LoRA's 4PD step (no weight
        gradients for the frozen weights)""")
def _ckpt_lora_cost():
    extra = time_factor(True, True, False) / time_factor(False, True, False) - 1
    return 100 * extra, {"full fine-tuning's +33% (a 6PD step)": 100 * (time_factor(True, False, False) - 1),
                         "a whole extra step": 100}


@figure("ckpt-mfu-vs-hfu", COMPUTED, """MFU = HFU x model FLOPs / hardware FLOPs = 50% x 6PD / 8PD with full
        recomputation (memory_advisor.time_factor's FLOP count); the definitions: Chowdhery et al. 2022 (PaLM,
        arXiv 2204.02311), Appendix B""")
def _ckpt_mfu():
    model, hardware = time_factor(False, False, False), time_factor(True, False, False)
    return 50 * model / hardware, {"MFU = HFU": 50, "the ratio inverted (x 8/6)": 50 * hardware / model}


@figure("ckpt-activation-offload", COMPUTED, """2 x memory.estimate_training_memory('Llama-2-7B', batch_size=1,
        seq_len=2048, precision='bf16').all_at_once['activations'] / 31.5 GB/s (PCIe 4.0 x16, one direction:
        16 GT/s x 16 lanes x 128/130, PCI-SIG 2017): out in forward, back in backward, in seconds""")
def _ckpt_offload():
    saved = estimate_training_memory("Llama-2-7B", batch_size=1, seq_len=2048, precision="bf16").all_at_once["activations"]
    seconds = 2 * saved / PCIE4_X16_BYTES_PER_S
    return seconds, {"one way only (the copy back forgotten)": seconds / 2,
                     "bits read as bytes (252 Gbit/s taken as GB/s)": seconds / 8}


# ------------------------------------------------------------------------------------------------
# Chapter 3: mixed precision
# ------------------------------------------------------------------------------------------------

@figure("prec-fp16-max", COMPUTED, "number_formats.format_info('fp16').max (torch.finfo)")
def _prec_fp16_max():
    return format_info("fp16").max, {"2^16": 2.0**16}


@figure("prec-fp16-min-subnormal", COMPUTED, "number_formats.format_info('fp16').min_subnormal: the bits 0...01")
def _prec_fp16_min_subnormal():
    info = format_info("fp16")
    return info.min_subnormal, {"the smallest normal, 2^-14": info.min_normal,
                                "2^-25 (which rounds to 0)": info.min_subnormal / 2}


_FP8_SOURCE = "the OCP 8-bit floating point specification (2023) and Micikevicius et al. 2022 (arXiv 2209.05433)"


@figure("prec-fp8-e4m3-max", CITED, f"torch.finfo(torch.float8_e4m3fn).max; {_FP8_SOURCE}")
def _prec_e4m3():
    return float(torch.finfo(torch.float8_e4m3fn).max), {
        "E5M2's maximum": float(torch.finfo(torch.float8_e5m2).max),
        "an IEEE-style E4M3 (top exponent reserved for inf and NaN)": 240.0, "fp16's": format_info("fp16").max}


@figure("prec-fp8-e5m2-max", CITED, f"torch.finfo(torch.float8_e5m2).max; {_FP8_SOURCE}")
def _prec_e5m2():
    return float(torch.finfo(torch.float8_e5m2).max), {
        "E4M3's maximum": float(torch.finfo(torch.float8_e4m3fn).max), "fp16's 65504": format_info("fp16").max}


@figure("prec-tf32-mantissa", CITED, """NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020): TF32 has fp32's
        8 exponent bits and fp16's 10 mantissa bits (number_formats.format_info('fp16').mantissa_bits)""")
def _prec_tf32():
    return format_info("fp16").mantissa_bits, {"fp32's 23": format_info("fp32").mantissa_bits,
                                               "bf16's 7": format_info("bf16").mantissa_bits,
                                               "the 19 bits it uses in all": 19}


# ------------------------------------------------------------------------------------------------
# Chapter 4: gradient accumulation
# ------------------------------------------------------------------------------------------------

@figure("acc-effective-batch", COMPUTED, "micro-batch x accumulation steps x data-parallel ranks")
def _acc_effective_batch():
    return 4 * 8 * 2, {"the ranks forgotten": 4 * 8, "the accumulation steps forgotten": 4 * 2}


TOKEN_LOSSES = ([2.0], [1.0, 1.0, 1.0])  # two micro-batches (or ranks): 1 token and 3 tokens


def _token_means():
    tokens = [t for group in TOKEN_LOSSES for t in group]
    global_mean = sum(tokens) / len(tokens)
    mean_of_means = sum(sum(g) / len(g) for g in TOKEN_LOSSES) / len(TOKEN_LOSSES)
    return global_mean, {"the mean of per-micro-batch means": mean_of_means}


figure("acc-token-normalization", COMPUTED, "sum of every token's loss / number of tokens: (2 + 1 + 1 + 1) / 4")(
    _token_means)
figure("dist-token-trap-example", COMPUTED, "sum of every token's loss / number of tokens over both ranks")(
    _token_means)


@figure("acc-large-batch-lr", CITED, """Goyal et al. 2017 (Accurate, Large Minibatch SGD, arXiv 1706.02677): the linear
        scaling rule lr = 0.1 x batch / 256, at batch 8,192""")
def _acc_large_batch_lr():
    k = 8192 / 256
    return 0.1 * k, {"square-root scaling": 0.1 * k**0.5, "unchanged": 0.1}

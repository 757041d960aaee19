# %% [markdown]
# # Chapter 6: QLoRA — a 4-bit frozen base under LoRA, built from scratch and measured
#
# LoRA (chapter 1) trains a sliver of the parameters, but the frozen base still sits in memory in 16 or 32
# bits: for large models the base weights are what no longer fit. **QLoRA** (Dettmers et al. 2023,
# arXiv 2305.14314) stores the frozen base in **4 bits** and trains LoRA on top: a 65B model fine-tuned on
# one 48 GB GPU. In this chapter you will:
#
# - **see why 4 bits**: the bytes of a 7B / 13B / 65B base in fp32, bf16, int8 and 4 bits, with the estimator;
# - **build block-wise absmax quantization** (Exercise 6.1), then **NormalFloat4** from its definition
#   (6.2) and **double quantization** (6.3), measuring error and bits per parameter from real byte counts;
# - **prove it equal to torchao's** `to_nf4`, code for code, and explain every difference;
# - **build the QLoRA layer** (6.4): dequantize on the fly, and again in backward, so no memory is spent
#   on the dequantized weight; fine-tune the tiny model on fp32, NF4 and int4 bases;
# - **what else QLoRA needs**: paged optimizers (explained), 8-bit optimizer state (built and measured),
#   merging an adapter back into a 4-bit base (the error it adds, measured);
# - **reproduce "65B on 48 GB"** with the course's own estimator, then **play**, check the **myths**, and **drill**.
#
# Every number below comes from a run in this notebook. It executes in well under a minute on 2 CPU cores.

# %%
import copy

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from IPython.display import Markdown, display

from efftrain_lib import data
from efftrain_lib.devices import describe, get_device, seed_everything, use_one_cpu_thread
from efftrain_lib.models import load_pretrained

device = get_device()
use_one_cpu_thread(device)  # steady timings on a tiny model (see its docstring)
seed_everything(0)
print(describe(device))


def table(header, rows):
    """A Markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return Markdown("\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]))


# %% [markdown]
# ## 1. Why 4 bits
#
# LoRA removes the gradients and optimizer state of the base, not the base itself. The course's estimator
# (`efftrain_lib.memory.estimate_training_memory`, chapter 0) now knows the base's storage format: the
# decoder's frozen Linears in the policy's dtype, in int8, or in 4 bits (NF4; with double quantization).
# Its `weights` category for LLaMA-1 shapes (the paper's models) with a rank-64 LoRA on every Linear
# (the adapter, embeddings and output layer included), against common GPU sizes:

# %%
from efftrain_lib.memory import GB, estimate_training_memory
from efftrain_lib.qlora_explorer import LLAMA1

FORMATS_1 = {"fp32": dict(precision="fp32"), "bf16": dict(precision="bf16"),
             "int8": dict(precision="bf16", base_format="int8"), "NF4": dict(precision="bf16", base_format="nf4"),
             "NF4 + double quant": dict(precision="bf16", base_format="nf4_dq")}
base_gb = {name: {fmt: estimate_training_memory(LLAMA1[name], batch_size=1, seq_len=128, lora_rank=64,
                                                lora_targets="all-linear", **kw).weights / GB
                  for fmt, kw in FORMATS_1.items()}
           for name in ("LLaMA-7B", "LLaMA-13B", "LLaMA-65B")}
display(table(["model", "parameters", *FORMATS_1], [
    [name, f"{LLAMA1[name].num_parameters() / 1e9:.1f}B", *(f"{gb:.1f} GB" for gb in row.values())]
    for name, row in base_gb.items()]))
print("fits in 48 GB (weights alone):", {name: [f for f, gb in row.items() if gb <= 48] for name, row in base_gb.items()})

# %% [markdown]
# A 65B base is 130 GB in bf16 before anything trains; in 4 bits it is about a quarter of that. The rest of
# the chapter builds those 4 bits, checks them against torchao, and measures what they cost in accuracy and time.
#
# ## 2. Block-wise absmax quantization, from scratch
#
# To store a tensor in b bits, cut the flattened tensor into **blocks** of, say, 64 values. For each block:
#
# 1. its **absmax** `s = max |x|`, kept as an fp32 scale;
# 2. divide the block by `s`, so every value lies in [-1, 1];
# 3. replace each value by the **index of the nearest value of a code table** (2^b sorted values in [-1, 1]).
#
# Dequantizing is `code[index] * s`. One block by hand, with the uniform int4 table `k / 7`:

# %%
from efftrain_lib.quantization import int4_code_values

block = torch.tensor([0.12, -0.03, 0.50, -0.21, 0.02, 0.00, -0.47, 0.33])
int4 = int4_code_values()
absmax = block.abs().max()
scaled = block / absmax
print("int4 table:", [round(v, 3) for v in int4.tolist()])
print("absmax", absmax.item(), "-> scaled", [round(v, 3) for v in scaled.tolist()])

# %% [markdown]
# Why blocks? One outlier sets the scale for everything that shares it: with one absmax for a whole tensor,
# an outlier 50x the typical weight squeezes every ordinary value into the few codes around 0. Per block,
# the outlier only hurts its own 64 neighbours. The cost is one fp32 scale per block: 32/64 = 0.5 bit per
# parameter at block 64 (section 4 shrinks it).
#
# ### Exercise 6.1: block-wise absmax quantization
#
# Write `quantize_blockwise_absmax(x, block_size, code)` and `dequantize_blockwise_absmax(indices, absmax,
# code, block_size, shape)` in `exercises/qlora.py`: indices uint8 (one per value, flat), absmax float32 (one
# per block); the **nearest code value** (the tables are not evenly spaced); clear errors for a size that is not
# a multiple of the block size (ValueError: no silent padding), a non-floating tensor (TypeError), block
# size <= 0, and a code table that is not sorted or not 2^b values (ValueError). The grader compares your
# codes, scales and dequantized weight with torchao's.

# %%
from efftrain_lib.grade import check

check("qlora", exercise="6.1")

# %% [markdown]
# From here on the chapter uses the library's version (`efftrain_lib.quantization`), which also stores the
# codes packed (two 4-bit codes per byte) and reports the bytes it really holds. The error of int8 and int4
# on the tiny model's real weights (every Linear of the pretrained transformer) against block size, with and
# without one outlier weight of 50x the weights' standard deviation:

# %%
from efftrain_lib.qlora_explorer import quantization_error

model = load_pretrained()
weights = {name: p.detach() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name}
real = torch.cat([w.reshape(-1) for w in weights.values()])[: 48 * 4096]  # a multiple of every block size
std = real.std().item()
spiked = real.clone()
spiked[12345] = 50 * std
BLOCKS = [16, 64, 256, 1024, 4096, real.numel()]
sweep = {(fmt, spike): [quantization_error(x, fmt, b).rmse / std for b in BLOCKS]
         for fmt in ("int8", "int4") for spike, x in (("", real), (" + outlier", spiked))}
display(table(["format", *[("whole tensor" if b == real.numel() else f"block {b}") for b in BLOCKS]],
              [[f + s, *(f"{e:.4f}" for e in errs)] for (f, s), errs in sweep.items()]))
print("relative RMSE (RMSE / std of the weights); bits per parameter at block 16 / 64 / 4096:",
      [round(quantization_error(real, "int4", b).bits_per_parameter, 3) for b in (16, 64, 4096)])

# %%
# NBVAL_CHECK_OUTPUT
print("smaller blocks, smaller error (int4):", all(a < b for a, b in zip(sweep["int4", ""], sweep["int4", ""][1:])))
print("an outlier hurts a whole-tensor scale more than 64-value blocks:",
      sweep["int4", " + outlier"][-1] / sweep["int4", ""][-1] > sweep["int4", " + outlier"][1] / sweep["int4", ""][1])

# %% [markdown]
# ## 3. NormalFloat4
#
# Pretrained weights are roughly normal, so most values sit near 0 and evenly spaced codes waste levels on
# the rare tails. **NF4** places its 16 values at **quantiles of N(0, 1)**, so each code is hit about equally
# often, normalised to [-1, 1]. One twist: a symmetric set of 16 quantiles has no exact 0 (padding, ReLU
# zeros and zero blocks would all be rounded away from 0). NF4 is **asymmetric**: 8 positive quantiles,
# 7 negative ones, and an exact 0. The outermost probability cannot be 1 (the quantile would be infinite):
# bitsandbytes uses 0.9677083, the mean of 1 - 1/(2·15) and 1 - 1/(2·16).
#
# ### Exercise 6.2: NormalFloat4
#
# Write `nf4_code_values()`: the 16 values as a float32 tensor, ascending, built from that definition
# (`torch.distributions.Normal(0, 1).icdf`), equal to the published table within 1e-6.

# %%
check("qlora", exercise="6.2")

# %% [markdown]
# The library's table, built the same way, against bitsandbytes' published one (its CUDA kernel's constants),
# and the three 4-bit tables side by side: uniform int4 (`k/7`), FP4 (E2M1: 1 sign, 2 exponent, 1 mantissa
# bit, divided by its largest value 6) and NF4.

# %%
from efftrain_lib.quantization import NF4_PUBLISHED, fp4_code_values, nf4_code_values

nf4 = nf4_code_values()
nf4_diff = (nf4 - torch.tensor(NF4_PUBLISHED)).abs().max().item()
tables = {"int4": int4_code_values(), "FP4 (E2M1)": fp4_code_values(), "NF4": nf4}
fig, ax = plt.subplots(figsize=(7, 1.8))
for row, (name, values) in enumerate(tables.items()):
    ax.plot(values.tolist(), [row] * 16, "|", markersize=14, mew=2)
ax.set(yticks=range(3), yticklabels=list(tables), xlim=(-1.2, 1.05), title="the 16 values of each 4-bit table")
plt.show()
print(f"NF4 from its definition vs the published table: max |diff| {nf4_diff:.1e}")
print("distinct values: int4", len(set(int4.tolist())), "(-8/7 is never the nearest),",
      "FP4", len(set(fp4_code_values().tolist())), "(+0 and -0), NF4", len(set(nf4.tolist())))

# %%
# NBVAL_CHECK_OUTPUT
print("NF4 equals the published table within 1e-6:", nf4_diff <= 1e-6)
print("asymmetric with an exact zero:", (nf4 < 0).sum().item(), "negative,", (nf4 == 0).sum().item(), "zero,",
      (nf4 > 0).sum().item(), "positive")

# %% [markdown]
# Does it pay? The error of each table at block 64 on the tiny model's weights (by layer type), on normal
# samples, and on uniform samples (weights NF4 was not designed for):

# %%
FORMATS = ("int4", "fp4", "nf4")
generator = torch.Generator().manual_seed(0)
samples = {"normal samples": torch.randn(real.numel(), generator=generator),
           "uniform samples": torch.rand(real.numel(), generator=generator) * 2 - 1}
by_type = {}
for name, w in weights.items():
    by_type.setdefault(name.split(".")[-2], []).append(w.reshape(-1))
groups = {**{f"tiny model: {k}": torch.cat(v) for k, v in by_type.items()}, "tiny model: all Linears": real, **samples}
format_errors = {g: {f: quantization_error(x, f).rmse / x.std().item() for f in FORMATS} for g, x in groups.items()}
display(table(["tensor", "int4", "FP4", "NF4", "lowest"],
              [[g, *(f"{e[f]:.4f}" for f in FORMATS), min(e, key=e.get)] for g, e in format_errors.items()]))

# %%
# NBVAL_CHECK_OUTPUT
print("NF4 lowest on normal samples:", min(format_errors["normal samples"], key=format_errors["normal samples"].get) == "nf4")
print("NF4 lowest on the tiny model's Linears:",
      min(format_errors["tiny model: all Linears"], key=format_errors["tiny model: all Linears"].get) == "nf4")
print("int4 lowest on uniform samples:", min(format_errors["uniform samples"], key=format_errors["uniform samples"].get) == "int4")

# %% [markdown]
# NF4 wins where weights are bell-shaped, as the tiny model's are; on uniformly spread values the evenly
# spaced int4 wins. NF4 is built for a distribution, not for "any weights".
#
# ## 4. Double quantization
#
# At block 64 the fp32 scales cost 32/64 = 0.5 bit per parameter, an eighth of the 4-bit budget. QLoRA
# quantizes **the scales themselves**: torchao's scheme (the one the course follows) subtracts the scales'
# mean (they are all positive; centred, they use both halves of int8), then per group of 256 scales stores
# int8 codes with the factor 256 / (2 · the group's absmax), plus one fp32 factor per group and the mean:
# 8/64 + 32/(64·256) ≈ 0.127 bit per parameter.
#
# ### Exercise 6.3: double quantization
#
# Write `double_quantize(absmax, block_size=256)` -> `(codes int8, factors float32, mean)` and
# `double_dequantize(codes, factors, mean, block_size=256)`: round half to even (`torch.round`), clamp to
# [-128, 127], a last partial group allowed. The grader compares with torchao's, code for code.

# %%
check("qlora", exercise="6.3")

# %% [markdown]
# Bits per parameter, **measured** from the bytes the stored tensors hold (the library's `QuantizedTensor`:
# packed codes, scales, factors, mean), for a 1024 x 1024 normal weight and for the tiny model's Linears,
# beside the formula:

# %%
from efftrain_lib.quant_math import bits_per_parameter
from efftrain_lib.quantization import QuantizedTensor

big = torch.randn(1024, 1024, generator=generator) * 0.02
stored = {"fp32 scales": None, "double-quantized scales": 256}
rows, measured_bits = [], {}
for label, dq in stored.items():
    q = QuantizedTensor.quantize(big, "nf4", block_size=64, double_quant_block=dq)
    tiny_bytes = sum(QuantizedTensor.quantize(w, "nf4", block_size=64, double_quant_block=dq).nbytes
                     for w in weights.values())
    measured_bits[label] = q.nbytes * 8 / big.numel()
    rows.append([label, f"{q.nbytes:,}", f"{measured_bits[label]:.4f}",
                 f"{bits_per_parameter(4, 64, double_quant_block=dq):.4f}", f"{tiny_bytes * 8 / real.numel():.4f}"])
display(table(["NF4, block 64", "bytes (1024 x 1024)", "bits/param measured", "formula", "tiny model's Linears"], rows))

# %%
# NBVAL_CHECK_OUTPUT
print({label: round(bits, 3) for label, bits in measured_bits.items()})

# %% [markdown]
# The tiny model's small matrices pay a little more than the formula (a partial group of scales still costs a
# 4-byte factor, and each tensor a 4-byte mean): exact byte counts are `efftrain_lib.quant_math.blockwise_bytes`,
# which the estimator uses.
#
# ## 5. Equal to torchao
#
# torchao's `NF4Tensor` (`to_nf4`, torchao 0.18, pure PyTorch) is the reference. Quantize the same weight with
# ours and with `to_nf4(w, block_size=64, scaler_block_size=256)` and compare everything it stores:

# %%
from efftrain_lib.comparing import max_abs_diff
from efftrain_lib.nf4_reference import torchao_nf4
from efftrain_lib.quantization import (dequantize_blockwise_absmax, double_dequantize, double_quantize,
                                       quantize_blockwise_absmax)


def compare_with_torchao(w, scaler_block_size=256, table=None):
    """Ours vs torchao on one weight: (codes that differ, max |diff| of scales, of the dequantized weight)."""
    ref = torchao_nf4(w, 64, scaler_block_size)
    code = ref.table if table is None else table
    indices, absmax = quantize_blockwise_absmax(w, 64, code)
    dq = double_quantize(absmax, scaler_block_size)
    ours = dequantize_blockwise_absmax(indices, double_dequantize(*dq, scaler_block_size), code, 64, w.shape)
    scale_diff = max(max_abs_diff(dq.codes, ref.scale_codes), max_abs_diff(dq.factors, ref.scale_factors),
                     max_abs_diff(dq.mean, ref.scale_mean))
    return int((indices != ref.indices).sum()), scale_diff, max_abs_diff(ours, ref.dequantized)


big_ref = compare_with_torchao(big)
# The tiny model's matrices hold 64, 172 or 96 blocks: one group of scales per matrix, on both sides.
tiny_ref = [compare_with_torchao(w, w.numel() // 64) for w in weights.values()]
exact_table = compare_with_torchao(big, table=nf4)
print(f"1024 x 1024, torchao's table: {big_ref[0]} codes differ, scales max |diff| {big_ref[1]:.1e}, "
      f"dequantized max |diff| {big_ref[2]:.1e}")
print(f"{len(tiny_ref)} tiny-model matrices: {sum(r[0] for r in tiny_ref)} codes differ, "
      f"dequantized max |diff| {max(r[2] for r in tiny_ref):.1e}")
print(f"1024 x 1024 with the exact NF4 table: {exact_table[0]} of {big.numel():,} codes differ, "
      f"dequantized max |diff| {exact_table[2]:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
print("same codes, scales and dequantized weight as torchao (its table):",
      big_ref == (0, 0.0, 0.0) and all(r == (0, 0.0, 0.0) for r in tiny_ref))

# %% [markdown]
# With torchao's own table the arithmetic is the same, so the result is identical: max |diff| 0. With the exact
# table a handful of codes move, and every one is explained by a single difference: **torchao's NF4 table is
# bitsandbytes' rounded to 4 decimals** (e.g. -0.0911 for -0.0910500). A value lying between torchao's rounded
# midpoint of two neighbouring codes and the exact midpoint goes to the other neighbour (tests/test_qlora.py
# checks that every moved code is such a value). Two more differences, not exercised here: torchao computes in
# the weight's dtype (ours in fp32; they agree for fp32 weights), and it requires the number of blocks to fill
# whole groups of 256 scales (ours allows a last partial group, which the tiny model's 64-block matrices need).
#
# ## 6. The QLoRA layer
#
# The frozen base is stored as packed codes and scales. In the forward pass the layer dequantizes its weight in
# the compute dtype, multiplies, and drops it. The trap is backward: `F.linear(x, W)` saves `W` for the input's
# gradient `dx = g W`, so autograd would keep every layer's **dequantized** weight alive until backward, and the
# 4-bit storage would save nothing at the peak. The fix is a `torch.autograd.Function` whose backward
# **dequantizes again**: nothing weight-sized is saved (the frozen weight needs no gradient, so not even `x`).
# LoRA's `A` and `B` sit on top, exactly as in chapter 1.
#
# ### Exercise 6.4: QLoRALinear
#
# Write `QLoRALinear(base, rank, alpha, block_size=64, double_quant=True)`: NF4 codes packed two per byte,
# double-quantized scales, a frozen bias, the fp32 weight not kept; `lora_A` [rank, in] and `lora_B` [out, rank]
# the only trainable tensors; forward in the input's dtype; the autograd.Function described above. The grader
# compares forward and gradients with LoRA on the dequantized weight and looks at what autograd saves.

# %%
check("qlora", exercise="6.4")

# %% [markdown]
# The library's `efftrain_lib.qlora.QLoRALinear` against `efftrain_lib.lora.LoRALinear` on the dequantized weight
# (same A and B), and what autograd keeps for backward, measured by the course's saved-tensor counter:

# %%
from efftrain_lib.lora import LoRALinear
from efftrain_lib.qlora import QLoRALinear, QuantizedLinear
from efftrain_lib.saved_tensors import SavedTensorCounter

torch.manual_seed(0)
linear = nn.Linear(256, 512)
qlayer = QLoRALinear(linear, rank=8, alpha=16)
nn.init.normal_(qlayer.lora_B, std=0.02)  # as if trained, so the adapter's gradients are not trivial
reference_base = nn.Linear(256, 512)
with torch.no_grad():
    reference_base.weight.copy_(qlayer.dequantized_weight())
    reference_base.bias.copy_(linear.bias)
reference = LoRALinear(reference_base, 8, 16)
reference.lora_A.data.copy_(qlayer.lora_A.data)
reference.lora_B.data.copy_(qlayer.lora_B.data)
x = torch.randn(16, 256, generator=generator, requires_grad=True)
x_ref = x.detach().clone().requires_grad_()
g = torch.randn(16, 512, generator=generator)
(qlayer(x) * g).sum().backward()
(reference(x_ref) * g).sum().backward()
layer_diffs = {"output": max_abs_diff(qlayer(x), reference(x_ref)), "dx": max_abs_diff(x.grad, x_ref.grad),
               "lora_A.grad": max_abs_diff(qlayer.lora_A.grad, reference.lora_A.grad),
               "lora_B.grad": max_abs_diff(qlayer.lora_B.grad, reference.lora_B.grad)}
print("QLoRALinear vs LoRA on the dequantized weight, max |diff|:", {k: f"{v:.1e}" for k, v in layer_diffs.items()})
print("trainable:", [n for n, p in qlayer.named_parameters() if p.requires_grad], "| stored:", qlayer.weight_nbytes,
      "bytes for", 256 * 512, "weights")

frozen = QuantizedLinear(nn.Linear(256, 512, bias=False))
with SavedTensorCounter(frozen) as ours:
    frozen(x)
with SavedTensorCounter(frozen) as naive:
    nn.functional.linear(x, frozen.dequantized_weight())
print(f"saved for backward: autograd.Function {ours.saved_activation_bytes} bytes, "
      f"F.linear on the dequantized weight {naive.saved_activation_bytes:,} bytes (the whole fp32 weight)")

# %%
# NBVAL_CHECK_OUTPUT
print("gradients equal LoRA's on the dequantized weight within 1e-6:", max(layer_diffs.values()) <= 1e-6)
print("nothing weight-sized saved for backward:", ours.saved_activation_bytes == 0 and naive.saved_activation_bytes == 256 * 512 * 4)

# %% [markdown]
# ### Fine-tune the tiny model: fp32 base vs NF4 base vs int4 base
#
# The tiny transformer pretrained on the sonnets, fine-tuned on the founding documents with LoRA (rank 8, every
# Linear but the output layer) on three bases: **fp32** (chapter 1's LoRA), **NF4** with double quantization
# (`apply_qlora`), and **int4** with double quantization. The same batches, the course's one loop
# (`training.train`), one more step under the meter (weights, optimizer state, tensors saved for backward) and
# the time per step in interleaved rounds.

# %%
from efftrain_lib.lora import apply_lora
from efftrain_lib.qlora import apply_qlora
from efftrain_lib.qlora_explorer import compare_finetuning, quantized_bits_per_parameter

tokens, val_tokens = data.split_tokens(data.encode(data.load_text("founding_documents")))
get_batch = data.batch_sampler(tokens, batch_size=8, seq_len=64, seed=0)
val_batches = [data.batch_sampler(val_tokens, batch_size=16, seq_len=64, seed=1)(i) for i in range(4)]
BASES = {"fp32 base + LoRA": lambda: apply_lora(load_pretrained(), "all-linear", 8, 16),
         "NF4 base + LoRA": lambda: apply_qlora(load_pretrained(), 8, 16),
         "int4 base + LoRA": lambda: apply_qlora(load_pretrained(), 8, 16, code="int4")}
runs = compare_finetuning(BASES, get_batch, steps=20, make_optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
                          val_batches=val_batches, timing_rounds=5)
fp32_run = runs["fp32 base + LoRA"]
MIB = 2**20
display(table(["base", "trainable", "weights", "optimizer state", "saved for backward", "peak", "ms / step",
               "vs fp32 base", "validation loss"],
              [[label, f"{r.trainable:,}", f"{r.peak.weights / MIB:.3f} MiB", f"{r.peak.optimizer_state / MIB:.3f} MiB",
                f"{r.peak.activations / MIB:.2f} MiB", f"{r.peak.total / MIB:.2f} MiB", f"{1e3 * r.seconds_per_step:.0f}",
                f"{r.seconds_per_step / fp32_run.seconds_per_step:.2f}x", f"{r.val_loss:.4f}"] for label, r in runs.items()]))
fig, ax = plt.subplots(figsize=(6.5, 3))
for label, r in runs.items():
    ax.plot(r.log.losses, label=label)
ax.set(xlabel="step", ylabel="training loss", title="LoRA on three bases (same batches)")
ax.legend(fontsize=8)
plt.show()
nf4_model = runs["NF4 base + LoRA"].model
print(f"memory source: {fp32_run.peak.source}")
print(f"NF4 Linears: {quantized_bits_per_parameter(nf4_model):.3f} bits per weight (measured); the whole NF4 model: "
      f"{8 * runs['NF4 base + LoRA'].peak.weights / sum(p.numel() for p in load_pretrained().parameters()):.2f} bits "
      "per pretrained parameter (embeddings, norms and lm_head stay fp32, plus the adapters)")

# %%
# NBVAL_CHECK_OUTPUT
nf4_run = runs["NF4 base + LoRA"]
print("NF4 base: fewer weight bytes than the fp32 base:", nf4_run.peak.weights < 0.5 * fp32_run.peak.weights)
print("same bytes saved for backward as LoRA on an fp32 base:", nf4_run.peak.activations == fp32_run.peak.activations)
print("same trainable parameters:", len({r.trainable for r in runs.values()}) == 1)

# %% [markdown]
# The weights shrink and nothing else moves: the adapters, their gradients and Adam's state are the same, and
# thanks to the autograd.Function so are the tensors saved for backward. The price is time: every step
# dequantizes each weight twice (forward and backward). On this CPU with tiny matrices that overhead is large
# relatively; on a GPU the dequantize kernels are fused and the matmuls dominate. The validation losses stay close:
# quantization moved the starting point a little, and LoRA trains on top of the quantized weights it sees.
#
# ## 7. What else QLoRA needs
#
# ### Paged optimizers (CUDA only: explained, not faked)
#
# QLoRA's third ingredient handles **memory spikes**: a long sequence in a batch can push activations past the
# GPU's memory for a moment. bitsandbytes' paged optimizers allocate the optimizer state with CUDA **unified
# memory** (`cudaMallocManaged`): pages migrate to CPU RAM when the GPU runs out and back when the optimizer step
# touches them, so a spike slows one step instead of crashing the run. It needs the CUDA driver's page
# migration; there is nothing to page on a CPU, so this notebook does not pretend to.

# %%
if device.type == "cuda":
    print("CUDA is present: bitsandbytes' PagedAdamW (optim='paged_adamw_32bit' in transformers) pages its state "
          "through unified memory; install bitsandbytes to try it (not a course dependency).")
else:
    print("skipped: paged optimizers need CUDA unified memory; this machine has no GPU.")

# %% [markdown]
# ### 8-bit optimizer state
#
# Adam keeps two fp32 numbers per trainable value. For LoRA that is small, but for full fine-tuning it is the
# biggest block of memory (chapter 0). `efftrain_lib.optim8bit.AdamW8bit` (built small from Dettmers et al. 2022)
# stores both moments block-wise in 8 bits (blocks of 2048, bitsandbytes' dynamic code tables: signed for m,
# unsigned for v) and updates exactly as `torch.optim.AdamW` does in between; it is an optimizer class, so the
# step still happens in the course's one `training_step`. Full fine-tuning of the tiny model, three ways:

# %%
from efftrain_lib.optim8bit import AdamW8bit
from efftrain_lib.training import train

EMBEDDINGS = ("embed_tokens", "lm_head")


def optimizers_for(model):
    kept = [p for n, p in model.named_parameters() if n.startswith(EMBEDDINGS)]
    rest = [p for n, p in model.named_parameters() if not n.startswith(EMBEDDINGS)]
    return {"AdamW (fp32 state)": torch.optim.AdamW(model.parameters(), lr=2e-3),
            "AdamW8bit, every tensor": AdamW8bit(model.parameters(), lr=2e-3),
            "AdamW8bit, embeddings + lm_head fp32": AdamW8bit([{"params": rest}, {"params": kept, "optim_bits": 32}],
                                                              lr=2e-3)}


state_runs = {}
for label in optimizers_for(load_pretrained()):
    seed_everything(0)
    trial = load_pretrained()
    optimizer = optimizers_for(trial)[label]
    log = train(trial, get_batch, steps=15, optimizer=optimizer, desc=label)
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
    state_runs[label] = dict(model=trial, log=log, state=state_bytes)
fp32_state = state_runs["AdamW (fp32 state)"]
rows = []
for label, r in state_runs.items():
    drift = {n: max_abs_diff(p, q) for (n, p), q in zip(r["model"].named_parameters(), fp32_state["model"].parameters())}
    worst = max(drift, key=drift.get)
    r["drift"] = drift
    rows.append([label, f"{r['state'] / MIB:.3f} MiB", f"{r['state'] / fp32_state['state']:.2f}",
                 f"{r['log'].losses[-1]:.4f}", f"{drift[worst]:.3g} ({worst})"])
display(table(["optimizer", "state", "vs fp32", "final loss", "max |weight diff| vs fp32 AdamW (where)"], rows))

# %% [markdown]
# Quantizing every tensor's state goes wrong in one place: the rows of `embed_tokens` for characters absent from
# recent batches get a zero gradient, so m decays while v, stored relative to its block's largest value, rounds
# to 0; the update m / (sqrt(v) + eps) then explodes. `lm_head`'s rows for rare characters see tiny gradients and
# suffer the same way. This is why bitsandbytes recommends 32-bit state for embeddings (its `StableEmbedding`
# and `override_config`): keep those two tensors in fp32 and the rest of the model follows fp32 AdamW closely,
# for about a quarter of the state.

# %%
# NBVAL_CHECK_OUTPUT
eight_all, eight_kept = state_runs["AdamW8bit, every tensor"], state_runs["AdamW8bit, embeddings + lm_head fp32"]
print("8-bit everywhere: the embeddings drift far from fp32 AdamW:", eight_all["drift"]["embed_tokens.weight"] > 1.0)
print("embeddings + lm_head fp32: every weight within 0.1 of fp32 AdamW:", max(eight_kept["drift"].values()) < 0.1)
print("state under a third of fp32's:", eight_kept["state"] < fp32_state["state"] / 3)

# %% [markdown]
# ### Merging an adapter back into a 4-bit base
#
# After fine-tuning, LoRA merges `W + (B A) · scaling` for free inference (chapter 1). With a 4-bit base there
# are two choices: merge into a **full-precision** copy of the dequantized base (exact, but the model is 16 or 32
# bits again), or **requantize** the merged weight to NF4 (small again, but `W + ΔW` falls between the grid
# points: a new rounding error the adapter never saw in training). The NF4 model from section 6, both ways:

# %%
from efftrain_lib.qlora import merge_qlora, qlora_layers
from efftrain_lib.training import evaluate

merged_exact = merge_qlora(copy.deepcopy(nf4_model), requantize=False)
merged_4bit = merge_qlora(copy.deepcopy(nf4_model))
pretrained, requantized = dict(load_pretrained().named_modules()), dict(merged_4bit.named_modules())
squares, count = {"original 4-bit rounding": 0.0, "adapter update (B A) * scaling": 0.0, "requantization": 0.0}, 0
for name, layer in qlora_layers(nf4_model).items():
    base_w, delta = layer.dequantized_weight(), layer.delta_weight()
    squares["original 4-bit rounding"] += (base_w - pretrained[name].weight.detach()).pow(2).sum().item()
    squares["adapter update (B A) * scaling"] += delta.pow(2).sum().item()
    squares["requantization"] += (requantized[name].dequantized_weight() - (base_w + delta)).pow(2).sum().item()
    count += base_w.numel()
rms = {k: (v / count) ** 0.5 for k, v in squares.items()}
batch_x = val_batches[0][0]
with torch.no_grad():
    unmerged = nf4_model(batch_x)
    logit_diff = {label: max_abs_diff(m(batch_x), unmerged) for label, m in (("fp32", merged_exact), ("NF4", merged_4bit))}
    val_merged = {label: evaluate(m, val_batches) for label, m in (("fp32", merged_exact), ("NF4", merged_4bit))}
display(table(["model", "max |logit diff| vs unmerged", "validation loss"],
              [["unmerged (4-bit base + adapter)", "0", f"{nf4_run.val_loss:.4f}"],
               ["merged into fp32", f"{logit_diff['fp32']:.2e}", f"{val_merged['fp32']:.4f}"],
               ["merged and requantized to NF4", f"{logit_diff['NF4']:.2e}", f"{val_merged['NF4']:.4f}"]]))
print("RMS over every adapted weight:", {k: f"{v:.2e}" for k, v in rms.items()})
print(f"requantizing adds {rms['requantization'] / rms['adapter update (B A) * scaling']:.1f}x the adapter's update, "
      f"{rms['requantization'] / rms['original 4-bit rounding']:.2f}x the original rounding")

# %%
# NBVAL_CHECK_OUTPUT
print("fp32 merge equals the unmerged model within 1e-4:", logit_diff["fp32"] <= 1e-4)
print("requantized merge does not:", logit_diff["NF4"] > 1e-2)
print("requantization error comparable to the original rounding (within 2x):",
      0.5 < rms["requantization"] / rms["original 4-bit rounding"] < 2)

# %% [markdown]
# Requantizing adds a rounding error of the same size as the original quantization (the ratio printed above), a
# sizeable fraction of everything the adapter learned: the merged 4-bit model is a different model from the one you
# validated, with logits that moved visibly (its loss may move either way; see the table). Keep the adapter
# separate (serve the 4-bit base + LoRA), or merge into 16-bit weights, and re-evaluate whatever you ship.
#
# ## 8. "65B on 48 GB", by the course's own estimator
#
# The estimator and calculator (chapter 0) take `base_format` and `optimizer_state_format`; the advisor takes
# `quantization=True`. The paper's 65B fine-tune, as the estimator's settings, with where each comes from:

# %%
from efftrain_lib.memory_advisor import advise
from efftrain_lib.qlora_explorer import PAPER_65B, full_finetune_estimate, needed_gb, qlora_estimates

display(table(["setting", "value", "assumption"], [[k, f"`{v}`", why] for k, (v, why) in PAPER_65B.items()]))
estimates_65b = qlora_estimates("LLaMA-65B")
display(table(["LLaMA-65B", "weights", "gradients", "optimizer state", "activations", "needed (allocator's peak)",
               "fits 48 GB"],
              [[label, *(f"{getattr(e, c) / GB:.1f} GB" for c in ("weights", "gradients", "optimizer_state", "activations")),
                f"{needed_gb(e):.1f} GB", needed_gb(e) <= 48] for label, e in estimates_65b.items()]))
from efftrain_lib.memory_explorer import calculate, summary

print("the calculator:", summary(calculate(LLAMA1["LLaMA-65B"], **{k: v for k, (v, _) in PAPER_65B.items()})))
full_65b = needed_gb(full_finetune_estimate("LLaMA-65B"))
print(f"16-bit full fine-tuning of the same model (bf16 weights and gradients, fp32 Adam): {full_65b:.0f} GB")
pick = next(o for o in advise(LLAMA1["LLaMA-65B"], batch_size=1, seq_len=512, budget_gb=48, lora_rank=64,
                              lora_targets="all-linear", quantization=True) if o.fits)
print(f"the advisor's fastest option that fits 48 GB: {pick.name} ({pick.peak_bytes / GB:.1f} GB)")

# %%
# NBVAL_CHECK_OUTPUT
print("NF4 + double quantization fits 48 GB:", needed_gb(estimates_65b["NF4 + double quant"]) <= 48)
print("a 16-bit base does not:", needed_gb(estimates_65b["16-bit base"]) > 48)
print("16-bit full fine-tuning needs more than 780 GB:", full_65b > 780)
print("the advisor reaches for a 4-bit base:", "4-bit base" in pick.techniques)

# %% [markdown]
# The paper's headline ("from >780 GB of GPU memory to <48 GB") comes out of the course's own arithmetic, with
# its optimizer: bitsandbytes' paged AdamW updates in place. Double quantization matters at this size (the table
# above says by how much). And the optimizer's implementation is not a detail here: torch's default `foreach`
# AdamW would hold one more fp32 copy of the 0.8B trainable parameters during the step (chapter 0, section 2).
#
# ## 9. Play with it
#
# **Block size and format.** The error histogram of the tiny model's Linears in int4, FP4 or NF4, by block size,
# with double quantization on or off; the bits per parameter in the title come from the stored bytes. (Open the
# notebook in JupyterLab to move the controls; below, the picture they start from.)

# %%
from efftrain_lib.qlora_explorer import budget_explorer, draw_budget, draw_error_histogram, error_explorer

fig, ax = plt.subplots(figsize=(7, 3.2))
draw_error_histogram(ax, real, "nf4", 64, True)
plt.show()
error_explorer(real)

# %% [markdown]
# **Model size against a GPU budget.** LLaMA-1 7B to 65B with the paper's settings, each QLoRA ingredient added
# in turn, against a budget line:

# %%
fig, ax = plt.subplots(figsize=(8, 3.6))
draw_budget(ax, "LLaMA-65B", 48)
plt.show()
budget_explorer()

# %% [markdown]
# ## 10. Myths vs measurement

# %%
nf4_bits = quantized_bits_per_parameter(nf4_model)
whole_bits = 8 * nf4_run.peak.weights / sum(p.numel() for p in load_pretrained().parameters())
val = {label: r.val_loss for label, r in runs.items()}
myths = [
    ("QLoRA matches 16-bit LoRA",
     "The paper shows it for LLaMA 7B-65B: NF4 with double quantization matches 16-bit LoRA and full fine-tuning "
     "on MMLU and GLUE (its Tables 3-4), while FP4 falls behind. Here, after 20 steps: validation loss "
     f"{val['NF4 base + LoRA']:.4f} on NF4 vs {val['fp32 base + LoRA']:.4f} on fp32 "
     f"(int4: {val['int4 base + LoRA']:.4f}). Matching is measured on benchmarks, not guaranteed: the base you train on "
     "is the quantized one."),
    ("4-bit means 4 bits per parameter",
     f"Not even for the quantized weights: {measured_bits['fp32 scales']:.3f} bits with fp32 scales, "
     f"{measured_bits['double-quantized scales']:.3f} with double quantization (1024 x 1024, measured), "
     f"{nf4_bits:.3f} on the tiny model's small matrices. The whole tiny NF4 model holds {whole_bits:.1f} bits per "
     "pretrained parameter: embeddings, norms and the output layer stay in full precision, and the adapters come on top."),
    ("NF4 is optimal for any weights",
     f"It is built for normal weights: relative RMSE {format_errors['normal samples']['nf4']:.4f} vs int4's "
     f"{format_errors['normal samples']['int4']:.4f} on normal samples, and it wins on the tiny model's Linears too. "
     f"On uniform values int4 wins ({format_errors['uniform samples']['int4']:.4f} vs "
     f"{format_errors['uniform samples']['nf4']:.4f}). Equal-probability bins are not even minimum-MSE bins "
     "(Lloyd-Max would be); 'information-theoretically optimal' holds for N(0, 1) and that criterion only."),
    ("8-bit optimizers are a drop-in replacement",
     f"For most tensors: the state shrinks to {eight_kept['state'] / fp32_state['state']:.2f} of fp32's and the "
     f"final loss is {eight_kept['log'].losses[-1]:.4f} vs {fp32_state['log'].losses[-1]:.4f}. Quantizing the embeddings' state too moved an embedding weight by "
     f"{eight_all['drift']['embed_tokens.weight']:.3g} in 15 steps: keep embeddings (here also lm_head) in 32 bits."),
    ("Merging the adapter into a 4-bit model is free",
     f"Requantizing the merged weights adds an RMS error of {rms['requantization']:.2e}: "
     f"{rms['requantization'] / rms['adapter update (B A) * scaling']:.1f}x the adapter's whole update, about the "
     f"original 4-bit rounding ({rms['original 4-bit rounding']:.2e}); logits move by up to {logit_diff['NF4']:.2f} "
     f"(merging into fp32: {logit_diff['fp32']:.0e})."),
]
display(table(["claim", "measured here"], myths))

# %% [markdown]
# ## 11. Exercises
#
# Your four exercises in `exercises/qlora.py`, graded together (also in a terminal:
# `python -m efftrain_lib.grade qlora`). The reference answers (`solutions/qlora.py`) pass every check; peek only
# after trying:

# %%
check("qlora")

# %%
check("qlora", impl="solutions")

# %% [markdown]
# ## 12. Interview drill
#
# The chapter's cards. Reveal, grade yourself; numeric answers are checked. Missed cards come back first next time
# (also in a terminal: `python -m efftrain_lib.drill --chapter qlora`).

# %%
from efftrain_lib.drill import quiz

quiz("qlora")

# %% [markdown]
# # Chapter 1: LoRA — fine-tune a model by training a fraction of a percent of it
#
# **LoRA** (Low-Rank Adaptation, Hu et al. 2021) freezes the pretrained weight `W` and learns a low-rank
# update `ΔW = B A` beside it. In this chapter you will:
#
# - **see the problem**: what full fine-tuning of a 7B model costs, and how small a LoRA update is;
# - **build it** from scratch, one piece at a time, and break it on purpose (B = 0, A = 0, dropout);
# - **wrap a real model** by module name the way PEFT does, and meet the seed notes' substring bug;
# - **merge** the update for free inference, and measure that it is free;
# - **prove it equal to PEFT**: outputs, gradients, and adapter files that load both ways;
# - **fine-tune for real**: a tiny pretrained transformer adapted to a new text, LoRA vs full fine-tuning,
#   with a live memory plot;
# - **play**: rank, alpha, the spectrum of the learned update, rsLoRA's scaling;
# - **write it yourself** where it comes up: each piece before the chapter shows its own, and DoRA from your
#   LoRA, which this notebook never shows;
# - **check the folklore** (myths vs measurement), then **drill**.
#
# Every number below comes from a run in this notebook. It executes in under a minute on 2 CPU cores.

# %%
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from IPython.display import Markdown, display

from efftrain_lib import data
from efftrain_lib.devices import describe, get_device, seed_everything, use_one_cpu_thread
from efftrain_lib.models import TinyConfig, TinyTransformer, generate, load_pretrained

# transformers warns about a renamed attribute that PEFT still reads; nothing to act on here.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
device = get_device()
use_one_cpu_thread(device)  # steady timings on a tiny model (see its docstring)
seed_everything(0)
print(describe(device))

# %% [markdown]
# ## 1. The problem: full fine-tuning a 7B model
#
# Training with Adam keeps, per parameter: the weight, its gradient, and Adam's two moments `m` and `v`.
# In fp32 that is 4 + 4 + 8 = **16 bytes per parameter**, before a single activation. The LLaMA-7B shapes:
# 32 layers, hidden size d = 4096, MLP size 11008, vocabulary 32000.

# %%
LLAMA_7B = dict(layers=32, d=4096, ffn=11008, vocab=32000)


def llama_parameter_count(layers, d, ffn, vocab):
    attention = 4 * d * d          # q, k, v, o projections
    mlp = 3 * d * ffn              # gate, up, down
    norms = 2 * d                  # two RMSNorm weights per layer
    return 2 * vocab * d + layers * (attention + mlp + norms) + d  # embeddings + lm_head + layers + final norm


P = llama_parameter_count(**LLAMA_7B)
GB = 1e9
full_finetune = {"weights (fp32)": 4 * P, "gradients (fp32)": 4 * P, "Adam m and v (fp32)": 8 * P}
print(f"LLaMA-7B parameters: {P:,}")
for name, size in full_finetune.items():
    print(f"  {name:<22} {size / GB:6.1f} GB")
print(f"  {'total':<22} {sum(full_finetune.values()) / GB:6.1f} GB  (+ activations)")

# %% [markdown]
# The seed notes round to 7B parameters and get 28 + 28 + 56 = 112 GB. No single 80 GB GPU holds it.
#
# LoRA trains, for an adapted `d x k` weight, only `A` (`r x k`) and `B` (`d x r`): `(d + k) r` parameters
# instead of `d k`. With the paper's recipe, rank 8 on the q and v projections:

# %%
d = k = LLAMA_7B["d"]
r = 8
per_matrix = (d + k) * r
lora_total = LLAMA_7B["layers"] * 2 * per_matrix       # q_proj and v_proj in every layer
print(f"per adapted matrix: (d+k)r = {per_matrix:,} of dk = {d * k:,} -> {100 * per_matrix / (d * k):.4f}%")
print(f"whole model: {lora_total:,} trainable of {P:,} -> {100 * lora_total / P:.4f}%")
lora_finetune = {"weights (fp32)": 4 * P, "gradients (fp32)": 4 * lora_total, "Adam m and v (fp32)": 8 * lora_total}
print(f"LoRA training memory before activations: {sum(lora_finetune.values()) / GB:.1f} GB "
      f"(gradients + Adam: {12 * lora_total / 1e6:.0f} MB)")

# %%
fig, ax = plt.subplots(figsize=(7, 2.6))
for row, (label, parts) in enumerate([("full fine-tuning", full_finetune), ("LoRA q,v r=8", lora_finetune)]):
    left = 0
    for color, (name, size) in zip(["tab:blue", "tab:orange", "tab:green"], parts.items()):
        ax.barh(row, size / GB, left=left, color=color, label=name if row == 0 else None)
        left += size / GB
ax.axvline(80, color="red", linestyle=":", label="one 80 GB GPU")
ax.set(yticks=[0, 1], yticklabels=["full fine-tuning", "LoRA q,v r=8"], xlabel="GB (activations not included)")
ax.legend(loc="lower right", fontsize=8)
plt.show()

# %% [markdown]
# LoRA does not shrink the frozen weights; it removes the gradients and the optimizer state of everything it
# freezes. The frozen weights shrink only if they are stored in fewer bits: a bf16 base (2 bytes/param),
# or QLoRA's 4-bit base (chapter 6). Mixed precision does not shrink them: autocast keeps fp32 weights and
# adds bf16 copies (chapters 0 and 3 measure it).
#
# ## 2. Build it step by step
#
# The frozen layer computes `W x`. LoRA adds `(alpha / r) · B A x`:
#
# - `A` (`r x k`) starts random: **Kaiming-uniform**, as PEFT does (`kaiming_uniform_(a=sqrt(5))`, so
#   `|A| ≤ 1/sqrt(k)`).
# - `B` (`d x r`) starts at **zero**, so `B A = 0`: at step 0 the model is exactly the pretrained model.
# - `alpha / r` scales the update. It was meant to make the rank a free choice: Hu et al. set alpha once,
#   to the first r they tried, and did not retune the learning rate when varying r (section 4.1). It
#   does not quite hold: section 7 measures the first update shrinking as r grows, which is what rsLoRA's
#   `alpha / sqrt(r)` fixes.
# - Dropout, if any, applies to the input of the LoRA branch only; the frozen path is untouched.
#
# ### Exercise 1.1: LoRALinear
#
# Before the chapter builds it, build yours. Open `exercises/lora.py` beside this notebook and write
# `LoRALinear(base, rank, alpha, dropout=0.0)`: keep `base` frozen (weight and bias), create `lora_A`
# (`rank x in_features`, Kaiming-uniform) and `lora_B` (`out_features x rank`, zeros), `scaling = alpha / rank`,
# and a forward that adds the scaled low-rank branch, with dropout on that branch only. Run the check after
# each exercise: the grader loads your file afresh each time, stops a check that hangs, compares with PEFT's
# LoRA layer (with and without a bias, in train and eval mode, with and without dropout, all combined) and
# names the likely mistake when a check fails. Until you start, every check reports "not implemented yet".

# %%
from efftrain_lib.grade import check

check("lora", exercise="1.1")

# %% [markdown]
# The chapter's, in two small blocks (the branch, then the wrapper):

# %%
# NBVAL_CHECK_OUTPUT
class LoRALayer(nn.Module):
    """The trainable low-rank branch: x -> (alpha / r) * B A dropout(x)."""

    def __init__(self, in_features, out_features, rank, alpha, dropout=0.0):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))   # zero: the update starts at nothing
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))         # random: gradients can reach B
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling


class LinearWithLoRA(nn.Module):
    """A frozen nn.Linear (weight and bias) plus a LoRALayer beside it."""

    def __init__(self, base: nn.Linear, rank, alpha, dropout=0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora = LoRALayer(base.in_features, base.out_features, rank, alpha, dropout)

    def forward(self, x):
        return self.base(x) + self.lora(x)


torch.manual_seed(0)
base = nn.Linear(64, 64)
layer = LinearWithLoRA(base, rank=8, alpha=16)
x = torch.randn(4, 64)
print("output equals the base layer at step 0:", torch.equal(layer(x), base(x)))
print("A within the Kaiming bound 1/sqrt(64) =", 1 / math.sqrt(64), ":", bool(layer.lora.lora_A.abs().max() <= 1 / math.sqrt(64)))
print("trainable:", [n for n, p in layer.named_parameters() if p.requires_grad])

# %% [markdown]
# Why random `A` and zero `B`, and not both zero? The gradient of `B` is `(dL/dy) (A x)^T` and the
# gradient of `A` is `B^T (dL/dy) x^T`. At step 0, `B = 0`, so `A` gets no gradient yet, but `B` does,
# because `A x ≠ 0`. After one step `B ≠ 0` and both learn. If `A` is zero too, both gradients are zero
# **forever**. Run it:

# %%
def train_branch(layer, steps=20, lr=0.1):
    """A few SGD steps of the LoRA branch towards a random target; returns the max |grad| seen per factor."""
    target = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    inputs = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=lr)
    seen = {"lora_A": 0.0, "lora_B": 0.0}
    for _ in range(steps):
        loss = F.mse_loss(layer(inputs), target)
        loss.backward()
        for name in seen:
            seen[name] = max(seen[name], getattr(layer.lora, name).grad.abs().max().item())
        optimizer.step()
        optimizer.zero_grad()
    return seen, loss.item()


torch.manual_seed(0)
good = LinearWithLoRA(nn.Linear(64, 64), rank=8, alpha=16)
broken = LinearWithLoRA(nn.Linear(64, 64), rank=8, alpha=16)
nn.init.zeros_(broken.lora.lora_A)
for name, candidate in [("A Kaiming, B zero", good), ("A zero,    B zero", broken)]:
    seen, _ = train_branch(candidate)
    print(f"{name}: max |grad A| = {seen['lora_A']:.3g}, max |grad B| = {seen['lora_B']:.3g}, "
          f"||B A|| after 20 steps = {(candidate.lora.lora_B @ candidate.lora.lora_A).norm():.3g}")

# %% [markdown]
# With both at zero nothing ever moves: `max |grad| = 0` and `||B A|| = 0` after 20 steps.
#
# Dropout on the LoRA branch only: in training mode, with `B = 0`, the output still equals the base
# layer exactly, whatever the dropout rate. Once `B ≠ 0` dropout perturbs only the update.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
with_dropout = LinearWithLoRA(nn.Linear(64, 64), rank=8, alpha=16, dropout=0.5).train()
print("B = 0, dropout 0.5, train mode, output == base:", torch.equal(with_dropout(x), with_dropout.base(x)))

# %% [markdown]
# ### Exercise 1.2: merge and unmerge
#
# After training, `W' = W + (alpha/r) B A` is an ordinary weight: fold it in and the adapted layer is a plain
# `nn.Linear` again. Give your `LoRALinear` a `merge()` that adds `scaling · B A` into `base.weight` and
# remembers it (the forward must then skip the branch, in every mode), and an `unmerge()` that takes it back
# out. The grader compares with PEFT's merge, with and without a bias, in train and eval mode, merged,
# unmerged and merged again. Section 4 measures what merging buys.

# %%
check("lora", exercise="1.2")

# %% [markdown]
# ## 3. LoRA on a model, by module name
#
# Our tiny transformer uses LLaMA's module names, so `["q_proj", "v_proj"]` means here what it means in
# PEFT. PEFT's rule for a list of targets: a module is adapted when its **full name equals** an entry
# or **ends with "." + entry**. Not a substring test.
#
# ### Exercise 1.3: apply_lora
#
# Write `apply_lora(model, target_modules, rank, alpha, dropout=0.0)`: wrap, in place, every `nn.Linear` whose
# full name equals a target or ends with "." + target, by your `LoRALinear`; freeze everything else; return
# the model. The grader compares the layers you wrap with PEFT's own matching, on targets whose layers have a
# bias and targets whose layers do not, with every rank, alpha and dropout it tries.
#
# ### Exercise 1.4: count_parameters
#
# And `count_parameters(model) -> (trainable, total)`, each parameter counted once (a tied weight too,
# frozen or not). Both checks at once:

# %%
check("lora", exercise=["1.3", "1.4"])

# %% [markdown]
# The chapter's, from scratch:

# %%
# NBVAL_CHECK_OUTPUT
model = load_pretrained()
print(model.config)
print([name for name, m in model.named_modules() if isinstance(m, nn.Linear)][:8], "...")


def peft_style_match(name, targets):
    return any(name == t or name.endswith("." + t) for t in targets)


def replace_linear_with_lora(model, targets, rank, alpha, match=peft_style_match):
    for p in model.parameters():
        p.requires_grad_(False)                          # freeze everything ...
    chosen = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and match(n, targets)]
    for name in chosen:                                  # ... then add trainable LoRA beside each target
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LinearWithLoRA(getattr(parent, child), rank, alpha))
    return chosen


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


adapted = replace_linear_with_lora(load_pretrained(), ["q_proj", "v_proj"], rank=8, alpha=16)
print(len(adapted), "layers adapted:", adapted[:2], "...")

# %% [markdown]
# The seed notes match with `any(target in name for target in target_modules)`, a **substring** test.
# It looks the same on `["q_proj", "v_proj"]`. It is not: in a 12-layer model, ask for layer 1's query
# projection as `"1.self_attn.q_proj"` and a substring match also takes layer 11's; ask for `"proj"` and it
# takes every projection, where PEFT takes none and says so.

# %%
# NBVAL_CHECK_OUTPUT
def substring_match(name, targets):       # the seed notes' rule
    return any(t in name for t in targets)


deep = TinyTransformer(TinyConfig(vocab_size=data.VOCAB_SIZE, n_layers=12))
linear_names = [n for n, m in deep.named_modules() if isinstance(m, nn.Linear)]
for targets in (["1.self_attn.q_proj"], ["proj"]):
    by_substring = [n for n in linear_names if substring_match(n, targets)]
    by_peft = [n for n in linear_names if peft_style_match(n, targets)]
    print(f"{targets}: substring matches {len(by_substring)}, PEFT's rule matches {len(by_peft)}")
    if len(by_substring) < 5:
        print("   substring took:", by_substring)

# %% [markdown]
# A second bug hides in the seed's `apply_lora_to_model`: its LoRA layer freezes the Linear it wraps, and
# **nothing else** is frozen. The embeddings, the norms, every other Linear and the output layer still train,
# so the "0.1% trainable" promise becomes nearly 100%, with Adam state and gradients for all of it:

# %%
# NBVAL_CHECK_OUTPUT
def seed_style_apply(model, targets, rank=8, alpha=16):
    """What the seed's apply_lora_to_model does: wrap the matching Linears (each wrapper freezes its own
    base), and leave every other parameter as it was: trainable."""
    for name in [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and substring_match(n, targets)]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                LoRALinear(model.get_submodule(name), rank, alpha))
    return model


from efftrain_lib.lora import LoRALinear, apply_lora, count_parameters, lora_layers  # noqa: E402

seed_model = seed_style_apply(load_pretrained(), ["q_proj", "v_proj"])
trainable, total = count_parameters(seed_model)
print(f"seed-style apply: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.1f}%)")
trainable, total = count_parameters(apply_lora(load_pretrained(), ["q_proj", "v_proj"], rank=8, alpha=16))
print(f"apply_lora:       {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.1f}%)")

# %% [markdown]
# Now switch to the library's hardened version, `efftrain_lib.lora`. It is the same idea with the checks a
# real tool needs (`LoRALinear` keeps `lora_A` and `lora_B` as direct attributes, as the exercises do).
# Given the same A and B it computes exactly what our from-scratch version computes:

# %%
# NBVAL_CHECK_OUTPUT
ours = load_pretrained()
scratch = load_pretrained()
apply_lora(ours, ["q_proj", "v_proj"], rank=8, alpha=16)
replace_linear_with_lora(scratch, ["q_proj", "v_proj"], rank=8, alpha=16)
with torch.no_grad():
    for name, layer in lora_layers(ours).items():
        layer.lora_B.normal_(std=0.02)                   # a non-zero update, so the comparison means something
        twin = scratch.get_submodule(name).lora
        twin.lora_A.copy_(layer.lora_A)
        twin.lora_B.copy_(layer.lora_B)
ids = data.encode(data.load_text("founding_documents"))[:64][None]
print("library == from scratch:", torch.allclose(ours(ids), scratch(ids), atol=1e-6))
print("trainable, total:", count_parameters(ours), "from scratch:", count_trainable(scratch))

# %% [markdown]
# Bad input gets an error that says what was wrong and what is allowed:

# %%
# NBVAL_CHECK_OUTPUT
for attempt in [
    lambda: apply_lora(load_pretrained(), ["q_proj"], rank=0, alpha=16),
    lambda: apply_lora(load_pretrained(), ["proj"], rank=8, alpha=16),
    lambda: apply_lora(load_pretrained(), ["norm"], rank=8, alpha=16),
    lambda: apply_lora(apply_lora(load_pretrained(), ["q_proj"], rank=8, alpha=16), ["q_proj"], rank=8, alpha=16),
]:
    try:
        attempt()
    except (ValueError, TypeError) as error:
        print(f"{type(error).__name__}: {error}\n")

# %% [markdown]
# ## 4. Merge and unmerge: inference at no extra cost
#
# After training, `W' = W + (alpha/r) B A` is an ordinary weight: fold it in and the adapted layer costs
# what a plain `nn.Linear` costs. `unmerge` subtracts it again (to keep training, or to swap adapters).
# In fp32 the round trip is exact to rounding, about 1e-7 relative. The library's layer (Exercise 1.2's
# API) on a 512 x 512 layer:

# %%
torch.manual_seed(0)
lora_layer = LoRALinear(nn.Linear(512, 512), rank=8, alpha=16)
with torch.no_grad():
    lora_layer.lora_B.normal_(std=0.02)
x = torch.randn(256, 512)
original_weight = lora_layer.base.weight.detach().clone()
unmerged_out = lora_layer(x)
lora_layer.merge()
merged_out = lora_layer(x)
merge_diff = (merged_out - unmerged_out).abs().max().item()
lora_layer.unmerge()
restore_diff = (lora_layer.base.weight - original_weight).abs().max().item()
print(f"merged vs unmerged output: max |diff| = {merge_diff:.1e} (tolerance 1e-5): {merge_diff < 1e-5}")
print(f"W after merge + unmerge:   max |diff| = {restore_diff:.1e} (tolerance 1e-6): {restore_diff < 1e-6}")

# %% [markdown]
# The seed's `merge_weights` adds the update into the weight but keeps **no flag**: its forward still adds
# `B A x` on top, so after merging the update counts twice (and merging twice adds it twice). The library
# sets `merged`, and its forward then runs the base alone. Doing what the seed does to the same layer:

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    update = lora_layer(x) - lora_layer.base(x)          # (alpha / r) B A x
    lora_layer.base.weight += lora_layer.delta_weight()  # the seed's merge: no flag set
    doubled = lora_layer(x) - unmerged_out               # forward still adds B A x
    lora_layer.base.weight -= lora_layer.delta_weight()
print(f"after a flag-less merge the output moves by the update once more: max |diff - update| = "
      f"{(doubled - update).abs().max():.1e}; the update itself is up to {update.abs().max():.2f}")

# %%
def median_seconds(fn, repeats=30):
    fn()                                     # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


plain = nn.Linear(512, 512)
with torch.no_grad():
    plain.weight.copy_(lora_layer.base.weight)
    plain.bias.copy_(lora_layer.base.bias)
timings = {}
with torch.no_grad():
    timings["plain nn.Linear"] = median_seconds(lambda: plain(x))
    timings["LoRA, unmerged"] = median_seconds(lambda: lora_layer(x))
    lora_layer.merge()
    timings["LoRA, merged"] = median_seconds(lambda: lora_layer(x))
    lora_layer.unmerge()
for name, seconds in timings.items():
    print(f"{name:<16} {seconds * 1e6:8.1f} µs   {seconds / timings['plain nn.Linear']:.2f}x plain")

# %% [markdown]
# Merged, the layer is a plain matmul (the ratio is 1 up to timer noise); unmerged it pays for two thin
# extra matmuls. `benchmarks/lora.py` measures both ratios properly, with PEFT beside them.
#
# ## 5. Proven equal to PEFT
#
# The reference is Hugging Face PEFT on a real `LlamaForCausalLM` (built from a tiny config: no download).
# Give PEFT's LoRA the same `A` and `B` as ours, run the same batch, compare outputs and gradients.

# %%
import peft
from efftrain_lib.adapters import load_adapter, save_adapter
from efftrain_lib.comparing import max_abs_diff
from efftrain_lib.reference_models import copy_lora_weights, paired_lora_parameters, peft_lora_model, tiny_llama

TOLERANCE = 1e-5
targets = ["q_proj", "v_proj"]
ours_llama = apply_lora(tiny_llama(seed=0), targets, rank=8, alpha=16)
peft_llama = peft_lora_model(tiny_llama(seed=0), targets, rank=8, alpha=16)
with torch.no_grad():
    for layer in lora_layers(ours_llama).values():
        layer.lora_B.normal_(std=0.02)
copy_lora_weights(ours_llama, peft_llama)

tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
out_ours = ours_llama(input_ids=tokens, labels=tokens)
out_peft = peft_llama(input_ids=tokens, labels=tokens)
out_ours.loss.backward()
out_peft.loss.backward()
pairs = paired_lora_parameters(ours_llama, peft_llama)
logit_diff = max_abs_diff(out_ours.logits, out_peft.logits)
grad_diff = max(max_abs_diff(a.grad, b.grad) for _, a, b in pairs)
print(f"peft {peft.__version__}: {len(pairs)} adapter tensors compared")
print(f"logits:    max |diff| = {logit_diff:.1e}")
print(f"gradients: max |diff| = {grad_diff:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
print("equal to PEFT within", TOLERANCE, ":", logit_diff < TOLERANCE and grad_diff < TOLERANCE)

# %% [markdown]
# The same holds for the files. An adapter saved by our code in PEFT's on-disk format
# (`adapter_model.safetensors` + `adapter_config.json`) loads with `peft.PeftModel.from_pretrained`;
# one saved by PEFT's `save_pretrained` loads into ours.

# %%
workdir = Path(tempfile.mkdtemp(prefix="efftrain-adapters-"))
save_adapter(ours_llama, workdir / "ours", target_modules=targets, rank=8, alpha=16)
config = json.loads((workdir / "ours" / "adapter_config.json").read_text())


loaded_by_peft = peft.PeftModel.from_pretrained(tiny_llama(seed=0), workdir / "ours")
peft_llama.save_pretrained(workdir / "peft")
loaded_by_ours = load_adapter(tiny_llama(seed=0), workdir / "peft")
with torch.no_grad():
    reference = ours_llama(input_ids=tokens).logits
    diff_peft_loads_ours = max_abs_diff(loaded_by_peft(input_ids=tokens).logits, reference)
    diff_ours_loads_peft = max_abs_diff(loaded_by_ours(input_ids=tokens).logits, reference)
print(f"PEFT loads our adapter: max |diff| = {diff_peft_loads_ours:.1e}")
print(f"we load PEFT's adapter: max |diff| = {diff_ours_loads_peft:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
print(sorted(p.name for p in (workdir / "ours").iterdir()))
print({key: config[key] for key in ("peft_type", "r", "lora_alpha", "target_modules")})
print("both within", TOLERANCE, ":", max(diff_peft_loads_ours, diff_ours_loads_peft) < TOLERANCE)

# %% [markdown]
# ## 6. Fine-tune for real: LoRA vs full fine-tuning
#
# The tiny transformer (4 layers, d = 64, LLaMA module names) was pretrained on Shakespeare's sonnets
# (`scripts/pretrain_tiny.py` reproduces it). We adapt it to a different text: American founding
# documents, long prose lines instead of 14-line verse. Three runs on identical batches:
#
# - **full fine-tuning**: every weight trains (AdamW, lr 1e-3);
# - **LoRA q,v r=8**: the paper's recipe (lr 1e-2: LoRA is usually run at a higher learning rate);
# - **LoRA all-linear r=8**: every projection of attention and MLP, as QLoRA recommends.
#
# The live plot shows memory within each training step, measured by the course's meter: on CPU, exact
# accounting of weights, gradients, optimizer state and tensors saved for backward; on a GPU, the CUDA
# allocator's figures.

# %%
from efftrain_lib.liveplot import LiveMemoryPlot
from efftrain_lib.meter import MemoryMeter
from efftrain_lib.training import evaluate, train

adapt_train, adapt_val = data.split_tokens(data.encode(data.load_text("founding_documents")))
get_batch = data.batch_sampler(adapt_train, batch_size=16, seq_len=64, seed=0)
val_batches = data.fixed_batches(adapt_val, n_batches=4, batch_size=8, seq_len=64)
STEPS = 60
RUNS = {
    "full fine-tuning": dict(targets=None, lr=1e-3),
    "LoRA q,v r=8": dict(targets=["q_proj", "v_proj"], rank=8, alpha=16, lr=1e-2),
    "LoRA all-linear r=8": dict(targets="all-linear", rank=8, alpha=16, lr=1e-2),
}


def finetune(spec, steps=STEPS, meter=None, on_step=None, desc="fine-tune"):
    seed_everything(0)
    model = load_pretrained().to(device)
    if spec["targets"] is not None:
        apply_lora(model, spec["targets"], rank=spec["rank"], alpha=spec["alpha"],
                   use_rslora=spec.get("use_rslora", False))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    log = train(model, get_batch, steps=steps, optimizer=optimizer, meter=meter, on_step=on_step, desc=desc)
    return model, optimizer, log


val_before = evaluate(load_pretrained().to(device), val_batches)
live = LiveMemoryPlot(title="Memory within a training step: full fine-tuning vs LoRA")
results = {}
for label, spec in RUNS.items():
    meter = MemoryMeter()
    model, optimizer, log = finetune(spec, meter=meter, on_step=live.attach(meter, label), desc=label)
    results[label] = dict(model=model, log=log, meter=meter, val=evaluate(model, val_batches),
                          params=count_parameters(model))
live.finish()

# %%
rows = ["| run | trainable params | % of model | optimizer state | gradients | activations | peak step memory | median step | val loss |",
        "|---|---|---|---|---|---|---|---|---|"]
for label, result in results.items():
    trainable, total = result["params"]
    peak = result["meter"].last.peak
    saved = result["meter"].last.sample("forward").activations
    grads = result["meter"].last.sample("backward").gradients    # gradients exist between backward and zero_grad
    rows.append(f"| {label} | {trainable:,} | {100 * trainable / total:.2f}% | {peak.optimizer_state / 2**10:.0f} KiB "
                f"| {grads / 2**10:.0f} KiB | {saved / 2**20:.2f} MiB | {peak.total / 2**20:.2f} MiB "
                f"| {result['log'].median_step_seconds * 1e3:.1f} ms | {result['val']:.3f} |")
display(Markdown("\n".join(rows) + f"\n\nValidation loss before fine-tuning: {val_before:.3f}. "
                 f"Memory source: {results['full fine-tuning']['meter'].last.peak.source}."))

fig, ax = plt.subplots(figsize=(7, 3.2))
for label, result in results.items():
    ax.plot(result["log"].losses, label=label)
ax.set(xlabel="step", ylabel="training loss (nats/char)", title="Adapting the sonnet model to prose")
ax.legend()
plt.show()

# %% [markdown]
# A second source for the same step: the CPU allocator's own figures, read from `torch.profiler`. It sees
# what accounting cannot (temporaries inside operations, workspace of the matmuls), so it reads higher;
# it counts only what a step allocates above what was already there (weights and optimizer state are not
# in it).

# %%
from efftrain_lib.meter import profiler_peak_bytes
from efftrain_lib.models import language_model_loss


def step_allocator_peak(spec):
    model = load_pretrained()
    if spec["targets"] is not None:
        apply_lora(model, spec["targets"], rank=spec["rank"], alpha=spec["alpha"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    inputs, targets = get_batch(0)

    def step():
        language_model_loss(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()                                   # the first step creates Adam's state; measure the second
    return profiler_peak_bytes(step)


for label in ("full fine-tuning", "LoRA q,v r=8"):
    record = results[label]["meter"].last
    accounted = max(e.breakdown.activations + e.breakdown.gradients for e in record.timeline())
    print(f"{label:<18} allocator: {step_allocator_peak(RUNS[label])}")
    print(f"{'':<18} accounting, activations + gradients at their peak: {accounted / 2**20:.3f} MiB")

# %% [markdown]
# What the table says, for this tiny model: LoRA's optimizer state and gradients are a few percent of full
# fine-tuning's, but on a model this small the frozen weights and the activations dominate the step's
# peak, so the total shrinks much less. On a 7B model the proportions of section 1 apply. The trained
# models continuing the same prompt (sampled at temperature 0.8 with the same seed for each):

# %%
prompt = data.encode("We the People")
for label, result in results.items():
    print(f"{label:<22} {data.decode(generate(result['model'], prompt, 70, temperature=0.8, seed=0))!r}")
print(f"{'pretrained (sonnets)':<22} {data.decode(generate(load_pretrained(), prompt, 70, temperature=0.8, seed=0))!r}")

# %% [markdown]
# ## 7. Play with it
#
# **Rank and alpha.** Pick a layer shape: how many parameters does rank r train, and what share is that?
# (Open this notebook in JupyterLab to move the sliders.)

# %%
from efftrain_lib import lora_explorer

lora_explorer.rank_explorer()

# %% [markdown]
# **How low-rank is the update?** LoRA's bet is that the change fine-tuning needs has low rank. Compare
# the singular values of LoRA's learned `ΔW = (alpha/r) B A` (at most r nonzero) with the update full
# fine-tuning made to the same weight, `W_after − W_before`:

# %%
pretrained_state = load_pretrained().state_dict()
full_model = results["full fine-tuning"]["model"]
lora_model = results["LoRA q,v r=8"]["model"]
spectra_by_layer = {}
for name, layer in lora_layers(lora_model).items():
    full_delta = full_model.get_submodule(name).weight.detach().cpu() - pretrained_state[name + ".weight"]
    spectra_by_layer[name] = {
        "LoRA q,v r=8": lora_explorer.singular_values(layer.delta_weight().cpu()),
        "full fine-tuning": lora_explorer.singular_values(full_delta),
    }
first = next(iter(spectra_by_layer))
fig, ax = plt.subplots(figsize=(7, 3.2))
lora_explorer.draw_spectra(ax, spectra_by_layer[first], rank=8)
ax.set_title(f"{first}: singular values of the update")
plt.show()
for name, spectra in list(spectra_by_layer.items())[:4]:
    share = lora_explorer.energy_captured(spectra["full fine-tuning"], 8)
    print(f"{name}: the top 8 directions hold {100 * share:.0f}% of full fine-tuning's update (of 64)")
lora_explorer.spectrum_explorer(spectra_by_layer, rank=8)

# %% [markdown]
# **alpha / r vs rsLoRA's alpha / sqrt(r), derived at B = 0.** Adam's first step moves every parameter by
# `lr * m / sqrt(v) = lr * sign(gradient)`. At `B = 0`, `A` gets no gradient (it is multiplied by B), and
# every entry of `B` moves by `±lr`, whatever the scaling. So `B A x` is a sum over `r` directions of `A x`
# with signs: it grows like `sqrt(r)`, and the update `scaling * B A x` like `scaling * sqrt(r)`. Under
# `alpha / r` a higher rank means a *smaller* first update, like `1/sqrt(r)`; rsLoRA (Kalajdzievski 2023)
# scales by `alpha / sqrt(r)` and keeps it flat. Measured below: one Adam step from `B = 0` with the
# library's `LoRALinear` at each rank (mean of 4 seeds), then 30 training steps at ranks 2 and 32.

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
lora_explorer.draw_update_norms(ax, [1, 2, 4, 8, 16, 32, 64, 128, 256], alpha=16)
plt.show()

scaling_rows = ["| rank | scaling rule | scaling | mean ‖ΔW‖ after 30 steps | val loss |", "|---|---|---|---|---|"]
for rank in (2, 32):
    for rslora in (False, True):
        spec = dict(targets=["q_proj", "v_proj"], rank=rank, alpha=16, lr=1e-2, use_rslora=rslora)
        model, _, _ = finetune(spec, steps=30, desc=f"r={rank} rslora={rslora}")
        norms = [layer.delta_weight().norm().item() for layer in lora_layers(model).values()]
        rule = "alpha/sqrt(r)" if rslora else "alpha/r"
        scaling_rows.append(f"| {rank} | {rule} | {lora_explorer.scaling(16, rank, rslora):.3g} "
                            f"| {sum(norms) / len(norms):.3f} | {evaluate(model, val_batches):.3f} |")
display(Markdown("\n".join(scaling_rows)))
lora_explorer.scaling_explorer()

# %% [markdown]
# ## 8. Which modules to adapt?
#
# The seed notes say "q and v work best". The LoRA paper's Table 5 fixes a budget (18M parameters on
# GPT-3) and spends it differently. The same experiment on our tiny model, 1,024 LoRA parameters per
# layer in every run, 40 steps each:

# %%
PAPER_TABLE_5 = {"q r=8": 70.4, "v r=8": 73.0, "q,v r=4": 73.7, "q,k,v,o r=2": 73.7}  # WikiSQL accuracy, GPT-3 175B
BUDGET_RUNS = {
    "q r=8": (["q_proj"], 8),
    "v r=8": (["v_proj"], 8),
    "q,v r=4": (["q_proj", "v_proj"], 4),
    "q,k,v,o r=2": (["q_proj", "k_proj", "v_proj", "o_proj"], 2),
}
budget_rows = ["| adapted | trainable params | val loss here (lower is better) | paper Table 5, WikiSQL acc. % |",
               "|---|---|---|---|"]
budget_loss = {}
for label, (targets, rank) in BUDGET_RUNS.items():
    model, _, _ = finetune(dict(targets=targets, rank=rank, alpha=2 * rank, lr=1e-2), steps=40, desc=label)
    budget_loss[label] = evaluate(model, val_batches)
    budget_rows.append(f"| {label} | {count_parameters(model)[0]:,} | {budget_loss[label]:.3f} | {PAPER_TABLE_5[label]} |")
display(Markdown("\n".join(budget_rows)))

# %% [markdown]
# Read the paper's numbers carefully: q and v together are the best *pair*, but spreading the same budget
# over all four attention matrices ties it, and q alone is clearly worse. The seed's explanation ("K
# changes would disturb every attention pattern") is a guess, not a finding. On a tiny character model the
# ordering can differ; what transfers is the method: fix the budget, then measure.
#
# ## 9. Variants: rsLoRA and DoRA
#
# **rsLoRA** changes one line: `scaling = alpha / sqrt(r)`. **DoRA** (Liu et al. 2024) splits the weight
# into a magnitude per output row and a direction, and applies LoRA to the direction:
#
# `y = (m / ‖W + s B A‖_row) · (W x + s B A x) + bias`, with `m` trainable, initialised to the row norms
# of `W`, and the norm treated as a constant in backward (detached, as the paper recommends).
#
# ### Exercise 1.5: DoRA from LoRA
#
# This one the notebook never shows. Write `DoRALinear(LoRALinear)` in `exercises/lora.py`: your LoRA layer
# plus a `magnitude` (an `nn.Parameter`, the row norms of `W` at init, so the layer starts at `base(x)`), a
# forward by the formula above, and `merge()` / `unmerge()` that fold all of it into `base.weight` and take it
# back out (what does unmerge need that the merged weight no longer tells?). With dropout in train mode, follow
# PEFT: the base keeps the clean `x`, and one mask feeds both the direction term and the LoRA branch,
# `y = base(x) + (m / n − 1) · W dropout(x) + (m / n) · s B A dropout(x)` with `n = ‖W + s B A‖_row` (the
# formula above when nothing is dropped). The grader compares with PEFT's DoRA: output, gradients (the norm
# detached), merged weight, in every combination of bias, train and eval mode, dropout and merge state.

# %%
check("lora", exercise="1.5")

# %% [markdown]
# The library's DoRA and rsLoRA against PEFT's, on the tiny LLaMA, and rsLoRA's one line from scratch:

# %%
class RSLoRALayer(LoRALayer):
    def __init__(self, in_features, out_features, rank, alpha, dropout=0.0):
        super().__init__(in_features, out_features, rank, alpha, dropout)
        self.scaling = alpha / math.sqrt(rank)        # the whole of rsLoRA


variant_rows = []
for variant in ("use_rslora", "use_dora"):
    torch.manual_seed(0)
    ours_v = apply_lora(tiny_llama(seed=0), ["q_proj", "v_proj"], rank=8, alpha=16, **{variant: True})
    peft_v = peft_lora_model(tiny_llama(seed=0), ["q_proj", "v_proj"], rank=8, alpha=16, **{variant: True})
    with torch.no_grad():
        for layer in lora_layers(ours_v).values():
            layer.lora_B.normal_(std=0.02)
    copy_lora_weights(ours_v, peft_v)
    a, b = ours_v(input_ids=tokens, labels=tokens), peft_v(input_ids=tokens, labels=tokens)
    a.loss.backward()
    b.loss.backward()
    grads = max(max_abs_diff(x.grad, y.grad) for _, x, y in paired_lora_parameters(ours_v, peft_v))
    variant_rows.append((variant, max_abs_diff(a.logits, b.logits), grads))

# The from-scratch rsLoRA branch against the library's use_rslora=True, on one layer with the same A and B.
torch.manual_seed(0)
base_linear = nn.Linear(64, 32)
scratch_rs = RSLoRALayer(64, 32, rank=4, alpha=8)
library_rs = LoRALinear(base_linear, rank=4, alpha=8, use_rslora=True)
with torch.no_grad():
    scratch_rs.lora_B.normal_(std=0.1)
    library_rs.lora_A.copy_(scratch_rs.lora_A)
    library_rs.lora_B.copy_(scratch_rs.lora_B)
x = torch.randn(8, 64)
scratch_diff = max_abs_diff(base_linear(x) + scratch_rs(x), library_rs(x))
for variant, logits_diff, grad_diff in variant_rows:
    print(f"{variant}: ours vs PEFT logits max |diff| = {logits_diff:.1e}, gradients {grad_diff:.1e}")
print(f"rsLoRA from scratch vs the library: max |diff| = {scratch_diff:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
print("rsLoRA and DoRA equal to PEFT within", TOLERANCE, ":", all(max(r[1], r[2]) < TOLERANCE for r in variant_rows))
print("rsLoRA from scratch equals the library within", TOLERANCE, ":", scratch_diff < TOLERANCE)

# %% [markdown]
# ## 10. Myths vs measurement
#
# Each LoRA claim of the seed notes, next to what this notebook measured.

# %%
full, qv, all_linear = (results[k] for k in RUNS)
optimizer_ratio = qv["meter"].last.peak.optimizer_state / full["meter"].last.peak.optimizer_state
best_budget = min(budget_loss, key=budget_loss.get)
activations = {label: r["meter"].last.sample("forward").activations for label, r in results.items()}
myths = [
    ("LoRA trains only 0.1% of the parameters",
     f"LLaMA-7B, q,v, r=8: {100 * lora_total / P:.3f}% of the model; {100 * per_matrix / (d * k):.2f}% of each "
     f"adapted matrix. Our tiny model: {100 * qv['params'][0] / qv['params'][1]:.1f}% (the share is 2r/d for "
     "square layers: small models pay more). The share depends on r, d and the targets; '0.1%' is a ballpark."),
    ("r=8 is about 0.4%",
     f"True per adapted 4096 x 4096 matrix ({100 * per_matrix / (d * k):.2f}%), not of the model."),
    ("LoRA gives slightly worse results",
     f"Here, after {STEPS} steps: full fine-tuning {full['val']:.3f}, LoRA q,v {qv['val']:.3f}, "
     f"all-linear {all_linear['val']:.3f} validation loss (from {val_before:.3f}). Adapting more layers closes "
     "much of the gap; the paper matches full fine-tuning on GPT-3 with r=4 on q,v."),
    ("q and v work best",
     f"Paper: q,v r=4 ties all four at r=2 (73.7). Here, at a fixed budget, the best was '{best_budget}'."),
    ("LoRA saves memory",
     f"Optimizer state: LoRA q,v holds {100 * optimizer_ratio:.1f}% of full fine-tuning's. Activations saved "
     f"for backward: {activations['LoRA q,v r=8'] / 2**20:.2f} MiB vs {activations['full fine-tuning'] / 2**20:.2f} MiB "
     "(a frozen Linear need not keep its input, but every layer's output path still does). The frozen "
     "weights stay whole."),
    ("no extra inference latency",
     f"Merged: {timings['LoRA, merged'] / timings['plain nn.Linear']:.2f}x a plain Linear; unmerged "
     f"{timings['LoRA, unmerged'] / timings['plain nn.Linear']:.2f}x."),
]
display(Markdown("| claim (seed) | measured here |\n|---|---|\n" + "\n".join(f"| {c} | {m} |" for c, m in myths)))

# %% [markdown]
# ## 11. Exercises, all together
#
# The chapter's exercises in `exercises/lora.py`, each where the notebook needs it:
#
# | exercise | what | where |
# |---|---|---|
# | 1.1 | `LoRALinear`: frozen base, Kaiming A, zero B, scaled branch, dropout on the branch | section 2 |
# | 1.2 | `merge` / `unmerge`, and the flag that makes forward skip the branch | section 2 |
# | 1.3 | `apply_lora`: PEFT's name matching, everything else frozen | section 3 |
# | 1.4 | `count_parameters`: trainable and total, each tensor once | section 3 |
# | 1.5 | `DoRALinear` from your `LoRALinear`, checked against PEFT's DoRA, never shown here | section 9 |
#
# All five at once (also in a terminal: `python -m efftrain_lib.grade lora`):

# %%
check("lora")

# %% [markdown]
# The reference answers (`solutions/lora.py`) pass every check. Peek only after trying:

# %%
check("lora", impl="solutions")

# %% [markdown]
# ## 12. Interview drill
#
# The chapter's cards, from the seed's questions and more. Reveal, grade yourself; numeric answers are
# checked. Missed cards come back first next time (also in a terminal: `python -m efftrain_lib.drill --chapter lora`).

# %%
from efftrain_lib.drill import quiz

quiz("lora")

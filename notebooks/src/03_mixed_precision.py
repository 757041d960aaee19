# %% [markdown]
# # Chapter 3: mixed precision and loss scaling, built by hand and measured
#
# **Mixed precision** (Micikevicius et al. 2018) runs the matmuls in 16 bits and keeps what must be exact in
# fp32: the master weights, the optimizer state, reductions and the loss. fp16 also needs **loss scaling**,
# or small gradients flush to zero. In this chapter you will:
#
# - **read the formats** (fp32, fp16, bf16) from `torch.finfo` and from the bits themselves;
# - **see why scaling exists**: the tiny transformer's gradients against fp16's window, with a slider;
# - **measure autocast**: which op runs in which dtype on this machine;
# - **see why fp32 master weights** are kept, why bf16 needs no scaling, and **write stochastic rounding**, what
#   lets weights live in bf16 after all;
# - **write a dynamic loss scaler** method by method (each exercise graded where it comes up, against
#   `torch.amp.GradScaler`), then meet the library's;
# - **run the seed notes' GradScaler** and watch its bugs;
# - **write the training step** that takes every option together, then **train** in fp32, bf16 and fp16 with the
#   scaler, and **measure** what mixed precision saves (and what not);
# - **check the folklore** (myths vs measurement), then **drill**.
#
# The exercises live in `exercises/loss_scaling.py` (open it in JupyterLab's editor beside this notebook). Each
# comes where the chapter needs it: the idea, then "Exercise 3.N", then a `check(...)` cell that grades your file
# afresh (stopping a check that hangs, naming the likely mistake). Until you start, every check reports "not
# implemented yet", and the chapter goes on with the library's version.
#
# Every number below comes from a run in this notebook. It executes in under a minute on 2 CPU cores.

# %%
import copy
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from IPython.display import Markdown, display

from efftrain_lib import data
from efftrain_lib import number_formats as nf
from efftrain_lib import precision_explorer as pe
from efftrain_lib.devices import describe, get_device, low_precision_dtype, seed_everything, use_one_cpu_thread
from efftrain_lib.grade import check
from efftrain_lib.models import language_model_loss, load_pretrained
from efftrain_lib.precision import autocast_op_dtypes

device = get_device()
seed_everything(0)
use_one_cpu_thread(device)  # steady timings on a tiny model (see its docstring)
print(describe(device))

# %% [markdown]
# ## 1. Number formats: fp32, fp16, bf16
#
# A float is `(-1)^sign x 2^(exponent - bias) x 1.mantissa`. The exponent bits set the **range**, the
# mantissa bits the **precision** (`eps`, the gap after 1.0). When the exponent bits are all zero the
# number is **subnormal**: `0.mantissa x 2^(1 - bias)`, smaller than the smallest normal number but with
# fewer significant bits. Every figure below is read from `torch.finfo` or from the bits.

# %%
# NBVAL_CHECK_OUTPUT
rows = ["| format | bits | exponent | mantissa | max | min normal | min subnormal | eps |", "|---|---|---|---|---|---|---|---|"]
for f in nf.format_table():
    rows.append(f"| {f.name} | {f.bits} | {f.exponent_bits} | {f.mantissa_bits} | {f.max:.4g} | {f.min_normal:.3g} "
                f"(2^{math.log2(f.min_normal):g}) | {f.min_subnormal:.3g} (2^{math.log2(f.min_subnormal):g}) "
                f"| {f.eps:.3g} (2^{math.log2(f.eps):g}) |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# The same facts from the bits: each value rounded into each format, split into sign | exponent | mantissa,
# and re-assembled.

# %%
# NBVAL_CHECK_OUTPUT
for value in (1.0, 0.1, 65504.0, 70000.0, 1e-7, 2.0**-24):
    for dtype in ("fp32", "fp16", "bf16"):
        fields = nf.bit_fields(value, dtype)
        print(f"{value!r:>9} {fields.dtype}: {fields.sign} {fields.exponent} {fields.mantissa:<23}  "
              f"{fields.kind:<9} {fields.explain()}")
    print()

# %% [markdown]
# What the table means in practice:
#
# - fp16 tops out at **65504**: 70000 becomes inf. bf16 has fp32's 8 exponent bits, so its range is fp32's.
# - fp16's precision is 3 decimal digits, bf16's barely 2: 0.1 is stored as 0.09998 and 0.10010.
# - Below fp16's smallest normal 2^-14 (6.1e-5) values become subnormal and lose bits; below 2^-25 they are 0.

# %%
# NBVAL_CHECK_OUTPUT
print("fp16: 1 + 2^-11 == 1 ?", nf.round_through(1 + 2.0**-11, "fp16") == 1.0, "(half an eps: rounds to even)")
print("bf16: 256 + 1 == 256 ?", nf.round_through(257.0, "bf16") == 256.0, "(bf16 has 8 significant bits)")
print("fp16: 1e-8 ->", nf.round_through(1e-8, "fp16"), "  bf16: 1e-8 ->", nf.round_through(1e-8, "bf16"))

fig, ax = plt.subplots(figsize=(8, 2.4))
for row, f in enumerate(nf.format_table()):
    lo, top = math.log2(f.min_subnormal), math.log2(f.max)
    ax.barh(row, math.log2(f.min_normal) - lo, left=lo, color="tab:orange", alpha=0.6,
            label="subnormal" if row == 0 else None)
    ax.barh(row, top - math.log2(f.min_normal), left=math.log2(f.min_normal), color="tab:blue", alpha=0.6,
            label="normal" if row == 0 else None)
ax.set(yticks=[0, 1, 2], yticklabels=[f.name for f in nf.format_table()], xlabel="log2 |value|",
       title="Representable magnitudes")
ax.legend(loc="lower left", fontsize=8)
plt.show()

# %% [markdown]
# **Try it:** type a value (`1e-8`, `65519`, `2**-24`, `0.1`) to see its bits and rounding error in each format.
# (Open this notebook in JupyterLab to use the widgets.)

# %%
pe.rounding_explorer("0.1")

# %% [markdown]
# ## 2. Why loss scaling exists
#
# Under fp16 autocast the backward pass carries **activation gradients** in fp16: the gradient of the loss
# with respect to every Linear's output. Here are the tiny transformer's gradients (pretrained on the
# sonnets, one batch of 16 x 64 characters of prose), computed in fp32 so that we see what fp16 would have
# to hold, as a histogram of log2 |g| against fp16's window.

# %%
text_train, text_val = data.split_tokens(data.encode(data.load_text("founding_documents")))
get_batch = data.batch_sampler(text_train, batch_size=16, seq_len=64, seed=0)
train_batch = data.batch_sampler(text_train, batch_size=8, seq_len=32, seed=0)  # smaller, for the training runs
val_batches = data.fixed_batches(text_val, n_batches=4, batch_size=8, seq_len=64)
grads = pe.collect_gradients(load_pretrained().to(device), get_batch(0))

fig, ax = plt.subplots(figsize=(8, 3.4))
pe.draw_gradient_histogram(ax, grads, log2_scale=0, dtype="fp16")
plt.show()

rows = ["| loss scale | kind | flush to 0 | subnormal | inf |", "|---|---|---|---|---|"]
for k in (0, 8, 16, 24):
    for kind, values in grads.items():
        fr = nf.representable_fractions(values, "fp16", scale=2.0**k)
        rows.append(f"| 2^{k} | {kind.split(' (')[0]} | {100 * fr['underflow']:.3f}% | {100 * fr['subnormal']:.2f}% "
                    f"| {100 * fr['overflow']:.3f}% |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# At scale 1 most activation gradients sit below fp16's smallest normal: they are subnormal (a few
# significant bits left) or flushed to zero. Multiplying the **loss** by S multiplies every gradient by S
# (chain rule), shifting the whole histogram right by log2 S. Too far, and the largest values pass 65504
# and become inf. The window of good scales:

# %%
fig, ax = plt.subplots(figsize=(8, 3.2))
pe.draw_scale_sweep(ax, grads[pe.ACTIVATION_GRADS][::8], range(0, 33))  # every 8th value: the shares, 8x faster
plt.show()

# %% [markdown]
# **Play:** move the loss scale and watch the histogram slide through fp16's window; switch to bf16.

# %%
pe.loss_scale_explorer(grads)

# %% [markdown]
# Not only a histogram: the same backward pass run under fp16 autocast, with and without scaling, and the
# weight gradients compared with fp32's. Also with the loss divided by 64, as gradient accumulation over 64
# micro-batches does: every gradient is 64 times smaller, and more of them fall off fp16's bottom.

# %%
def weight_grads(scale=1.0, dtype=None, divide=1):
    model = load_pretrained().to(device)
    inputs, targets = (t.to(device) for t in get_batch(0))
    with torch.autocast(device.type, dtype=dtype or torch.float16, enabled=dtype is not None):
        loss = language_model_loss(model(inputs), targets) / divide
    (loss * scale).backward()
    return torch.cat([p.grad.flatten() * divide / scale for p in model.parameters()])


reference = weight_grads()
for label, scale, dtype, divide in (
        ("fp16, no scaling", 1.0, torch.float16, 1), ("fp16, scale 2^16", 2.0**16, torch.float16, 1),
        ("fp16, loss/64, no scaling", 1.0, torch.float16, 64), ("fp16, loss/64, scale 2^16", 2.0**16, torch.float16, 64),
        ("bf16, loss/64, no scaling", 1.0, torch.bfloat16, 64)):
    g = weight_grads(scale, dtype, divide)
    lost = ((g == 0) & (reference != 0)).float().mean().item()
    rel = ((g - reference).norm() / reference.norm()).item()
    print(f"{label:<26} weight-gradient entries that became 0: {100 * lost:6.3f}%   relative error vs fp32: {rel:.4f}")

# %% [markdown]
# ## 3. Autocast: which op runs in which dtype
#
# `torch.autocast` keeps a list per device: ops that are safe and fast in 16 bits (matmuls, convolutions,
# attention) run in the low dtype; ops that need range or precision (losses, some reductions) run in fp32;
# the rest run in whatever dtype their inputs have. Measured here, on this device, by running each op:

# %%
# NBVAL_CHECK_OUTPUT
columns = {"CPU bf16, fp32 inputs": autocast_op_dtypes("cpu", torch.bfloat16),
           "CPU bf16, bf16 inputs": autocast_op_dtypes("cpu", torch.bfloat16, input_dtype=torch.bfloat16),
           "CPU fp16, fp16 inputs": autocast_op_dtypes("cpu", torch.float16, input_dtype=torch.float16)}
short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
rows = ["| op | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
for op in columns["CPU bf16, fp32 inputs"]:
    rows.append(f"| {op} | " + " | ".join(short[c[op]] for c in columns.values()) + " |")
display(Markdown("\n".join(rows)))

# %%
if torch.cuda.is_available():
    cuda = autocast_op_dtypes("cuda", torch.float16, input_dtype=torch.float16)
    print("CUDA fp16 autocast, fp16 inputs:", {op: short[d] for op, d in cuda.items()})
else:
    print("No CUDA device here: the CUDA column is skipped. On CUDA, autocast also forces softmax, log_softmax "
          "and layer_norm to fp32 (../shared/REFERENCE.md); on CPU (above) they keep their input dtype.")

# %% [markdown]
# Inside the tiny transformer under bf16 autocast: the projections produce bf16, RMSNorm computes in fp32
# and hands back its input dtype, and the loss is fp32 (`language_model_loss` upcasts the logits).

# %%
# NBVAL_CHECK_OUTPUT
model = load_pretrained().to(device)
seen = {}


def record_dtypes(name):
    def hook(module, inputs, output):
        seen.setdefault(name, (inputs[0].dtype, output.dtype))  # a forward hook returning a value replaces the output
    return hook


hooks = [module.register_forward_hook(record_dtypes(name))
         for name, module in model.named_modules() if name in
         ("embed_tokens", "layers.0.input_layernorm", "layers.0.self_attn.q_proj", "layers.0.self_attn",
          "layers.0.mlp.down_proj", "norm", "lm_head")]
with torch.autocast(device.type, dtype=torch.bfloat16):
    logits = model(get_batch(0)[0].to(device))
    loss = language_model_loss(logits, get_batch(0)[1].to(device))
for handle in hooks:
    handle.remove()
for name, (dtype_in, dtype_out) in seen.items():
    print(f"{name:<28} in {short.get(dtype_in, str(dtype_in)):<6} out {short[dtype_out]}")
print(f"{'loss':<28} {short[loss.dtype]}   parameters stay {short[next(model.parameters()).dtype]}")

# %% [markdown]
# ## 4. Master weights, and why bf16 needs no loss scaling
#
# The weights stay fp32 ("master weights"); autocast casts a bf16/fp16 copy of each weight for its matmul.
# Why not keep the weights themselves in 16 bits? An update `lr x grad` is usually far smaller than the
# weight, and a 16-bit sum rounds it away ("swamping"). One AdamW step (lr 1e-4) on the same gradients:

# %%
def one_adamw_step(dtype, lrs=(1e-4, 1e-5)):
    """The share of weights that one AdamW step actually changes, at each learning rate."""
    model = load_pretrained().to(device=device, dtype=dtype)
    inputs, targets = (t.to(device) for t in train_batch(0))
    language_model_loss(model(inputs), targets).backward()
    shares = []
    for lr in lrs:
        trial = copy.deepcopy(model)
        for copied, original in zip(trial.parameters(), model.parameters()):
            copied.grad = original.grad.clone()  # deepcopy does not copy .grad
        before = [p.detach().clone() for p in trial.parameters()]
        torch.optim.AdamW(trial.parameters(), lr=lr).step()
        changed = sum((p.detach() != b).sum().item() for p, b in zip(trial.parameters(), before))
        shares.append(changed / sum(b.numel() for b in before))
    return shares


adamw_shares = {}
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    at_4, at_5 = adamw_shares[short[dtype]] = one_adamw_step(dtype)
    print(f"weights in {short[dtype]}: one AdamW step changes {100 * at_4:5.1f}% of the weights at lr 1e-4, "
          f"{100 * at_5:5.1f}% at lr 1e-5")

# %% [markdown]
# In fp32 every weight moves. In bf16 a large share of the updates round away, more at the smaller learning
# rate (Adam's first step moves each weight by about lr; a bf16 weight of size 0.02 has steps of 2^-13 ≈ 1.2e-4).
# fp16 resolves finer steps (3 more mantissa bits) but has fp16's range problems: pure-fp16 weights and
# gradients meet the underflow of section 2. Hence fp32 master weights and fp32 optimizer state, whatever the
# compute dtype.
#
# **Why bf16 needs no loss scaling.** bf16 has fp32's exponent range: the same gradients as in section 2
# neither flush nor overflow. Measured on the histogram and in a real bf16 backward (section 2's last cell:
# no gradient entry became 0):

# %%
# NBVAL_CHECK_OUTPUT
for kind, values in grads.items():
    fr = nf.representable_fractions(values, "bf16")
    print(f"bf16, scale 1, {kind.split(' (')[0]}: {100 * fr['underflow']:.1f}% flush to 0, "
          f"{100 * fr['subnormal']:.1f}% subnormal, {100 * fr['overflow']:.1f}% inf")

# %% [markdown]
# ### Exercise 3.7: stochastic rounding to bf16
#
# The fp32 master copy costs 4 bytes per parameter on top of the bf16 one. Could the weights live in bf16
# alone? Not with round-to-nearest, as measured above: an update under half a bf16 step is rounded away, every
# time. **Stochastic rounding** rounds up or down at random, the nearer neighbour more often, so that on
# average the result is exact: x lies a fraction p of the way from one bf16 neighbour to the next, and lands
# on the farther one with probability p. Many small updates then add up on average, though each alone is too
# small to keep. This is how pure-bf16 training keeps its updates (torchao's bf16 AdamW does it).
#
# Write `stochastic_round_to_bf16(x)` in `exercises/loss_scaling.py`: a float32 tensor in, a bf16 tensor of the
# same shape out, each element one of the two bf16 values around it, away from zero with probability
# (distance from the nearer-to-zero one) / (the gap between them), with its own random draw from torch's
# default generator. Exact values, +-0, +-inf and NaN unchanged; any shape and strides; `TypeError` for
# anything but float32. Section 1 has what you need: which bits of an fp32 number bf16 keeps. The grader checks
# every kind of value (normal, subnormal, beyond bf16's largest, exact, special), the probabilities over 4096
# draws, `torch.manual_seed` reproducibility, and the claim itself: 100 updates of a tenth of a bf16 step
# must add up on average.

# %%
check("loss_scaling", exercise="3.7")

# %% [markdown]
# The library's version (`efftrain_lib.number_formats.stochastic_round_to_bf16`) on the tiny transformer's
# weights: 20 AdamW-sized steps of lr x sign(gradient) at lr 1e-5, each applied to the weights in fp32 (exact),
# in bf16 with round-to-nearest, and in bf16 with stochastic rounding. How much of the intended total move
# does each keep?

# %%
torch.manual_seed(0)
w0 = torch.cat([p.detach().flatten() for p in load_pretrained().parameters()])
update = -1e-5 * torch.sign(torch.randn_like(w0))  # the size of Adam's first steps, at lr 1e-5
stored = {"fp32": w0.clone(), "bf16, round to nearest": w0.bfloat16(), "bf16, stochastic rounding": w0.bfloat16()}
for _ in range(20):
    stored["fp32"] += update
    stored["bf16, round to nearest"] = (stored["bf16, round to nearest"].float() + update).bfloat16()
    stored["bf16, stochastic rounding"] = nf.stochastic_round_to_bf16(stored["bf16, stochastic rounding"].float() + update)
start = {"fp32": w0, "bf16, round to nearest": w0.bfloat16().float(), "bf16, stochastic rounding": w0.bfloat16().float()}
kept = {}
for label, w in stored.items():
    moved = w.float() - start[label]
    kept[label] = (moved @ (20 * update) / (20 * update).square().sum()).item()  # the share of the intended move
    print(f"{label:<26} keeps {kept[label]:6.3f} of the intended move; {100 * (moved != 0).float().mean():5.1f}% of "
          f"the {w0.numel()} weights moved at all")

# %%
# NBVAL_CHECK_OUTPUT
print("stochastic rounding keeps the move within 2%:", abs(kept["bf16, stochastic rounding"] - 1) < 0.02)
print("round to nearest loses most of it:", kept["bf16, round to nearest"] < 0.5)

# %% [markdown]
# ## 5. Build a loss scaler step by step
#
# ### A static scale, and its failure
#
# The simplest scaler multiplies the loss by a constant S and divides the gradients by S before the step.
# Any S with S x max|grad| < 65504 works (Micikevicius et al.). But the gradients change during training,
# and one S too large produces inf: the step writes inf/NaN into the weights and Adam's moments, for good.

# %%
def static_scale_step(scale, steps=2):
    torch.manual_seed(0)
    model = load_pretrained().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(steps):
        inputs, targets = (t.to(device) for t in train_batch(step))
        with torch.autocast(device.type, dtype=torch.float16):
            loss = language_model_loss(model(inputs), targets)
        (loss * scale).backward()
        for p in model.parameters():
            p.grad /= scale
        optimizer.step()
        optimizer.zero_grad()
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return loss.item(), finite


for log2_scale in (16, 30):
    loss, finite = static_scale_step(2.0**log2_scale)
    print(f"static scale 2^{log2_scale}: loss at step 2 = {loss:.4f}, weights finite: {finite}")

# %% [markdown]
# ### Dynamic scaling, grown one method at a time
#
# The fix (what `torch.amp.GradScaler` does): **check** the gradients for inf/NaN; if there are any,
# **skip** the step and **back off** (S x 0.5); after `growth_interval` **consecutive** finite steps, **grow**
# (S x 2). The scale then hovers just below the overflow threshold.
#
# You write it first, one method per exercise, in `exercises/loss_scaling.py`; after each check the notebook
# shows its own whiteboard version, grown in small cells on one class (as d2l does), to compare with yours.
#
# ### Exercise 3.1: scale
#
# `LossScaler(init_scale=2.**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)`: refuse the
# settings that break the feedback loop (`ValueError`: growth_factor <= 1, backoff_factor outside (0, 1),
# growth_interval < 1, a non-finite or non-positive init_scale); keep the scale; `scale(loss)` multiplies the
# loss by it (mind an fp16 loss: 65536 x 2 overflows fp16, so multiply by an fp32 tensor) and `get_scale()`
# returns it.

# %%
check("loss_scaling", exercise="3.1")

# %% [markdown]
# The notebook's version (no argument checks: the library's has them):

# %%
def add_to_class(cls):
    """Attach the decorated function to `cls` as a method (grow a class across cells)."""
    def register(fn):
        setattr(cls, fn.__name__, fn)
        return cls
    return register


class ScratchScaler:
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.scale_value = init_scale
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.growth_tracker = 0        # consecutive finite steps since the last overflow or growth
        self.found_inf = {}            # id(optimizer) -> inf/NaN in its gradients, for each one unscaled

    def scale(self, loss):
        # An fp32 tensor, as GradScaler: an fp16 loss times a Python float would stay fp16 (max 65504).
        return loss * torch.tensor(self.scale_value, dtype=torch.float32, device=loss.device)

    def get_scale(self):
        return self.scale_value

# %% [markdown]
# ### Exercise 3.2: unscale_
#
# `unscale_(optimizer)` multiplies every gradient of that optimizer by 1/S, in place, and records whether any is
# inf or NaN, for that optimizer (a step may use two optimizers with one scaler). A second call for the same
# optimizer before `update()` would divide twice: raise `RuntimeError`. fp16 gradients mean fp16 weights in the
# optimizer: raise `ValueError` (section 4 says why). Parameters without a gradient are skipped, in every param
# group. Hint: the `torch._foreach_*` ops do it for all tensors in one call each: `_foreach_norm(grads, inf)`
# gives max |g| per tensor (inf for inf, NaN for NaN, never an overflow for finite values).

# %%
check("loss_scaling", exercise="3.2")

# %% [markdown]
# The notebook's version. (The library does both jobs in one pass with the fused kernel GradScaler itself
# calls, `torch._amp_foreach_non_finite_check_and_unscale_`; only where a torch build lacks it does it fall back
# to the L2 norm, which is NaN or inf exactly when max |g| is, or when it overflows, re-checked then: on CPU
# `_foreach_norm` with `inf` takes a slow path.)

# %%
@add_to_class(ScratchScaler)
@torch.no_grad()
def unscale_(self, optimizer):
    if id(optimizer) in self.found_inf:
        raise RuntimeError("unscale_() has already been called on this optimizer since the last update()")
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    self.found_inf[id(optimizer)] = not bool(torch.stack(torch._foreach_norm(grads, math.inf)).isfinite().all())
    inverse = float(torch.tensor(1.0 / self.scale_value, dtype=torch.float32))  # 1/S in fp64, then fp32, as torch
    torch._foreach_mul_(grads, inverse)

# %% [markdown]
# ### Exercise 3.3: step
#
# `step(optimizer)` unscales if the caller did not (a caller who clips must unscale first, so that the clip sees
# true gradients; one who does not leaves it to `step`), skips the optimizer when its gradients held inf/NaN,
# and returns whether it stepped. With two optimizers, an overflow in one skips that one only.

# %%
check("loss_scaling", exercise="3.3")

# %%
@add_to_class(ScratchScaler)
def step(self, optimizer):
    if id(optimizer) not in self.found_inf:
        self.unscale_(optimizer)
    if self.found_inf[id(optimizer)]:
        return False                  # skip: inf/NaN would poison the weights and Adam's m and v
    optimizer.step()
    return True

# %% [markdown]
# ### Exercise 3.4: update
#
# `update()` is the dynamic part, once per iteration after the steps. If any optimizer found inf/NaN: back off
# (once) and reset the counter. Otherwise count one more *consecutive* finite step; at `growth_interval`, grow
# and reset. The scale must never grow to inf (torch keeps it in fp32, where 2^127 x 2 is inf). The grader
# compares whole runs with GradScaler's, also with other growth and backoff factors and intervals, and names
# the classic wrong rules.

# %%
check("loss_scaling", exercise="3.4")

# %%
@add_to_class(ScratchScaler)
def update(self):
    if any(self.found_inf.values()):
        self.scale_value *= self.backoff_factor
        self.growth_tracker = 0
    else:
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            grown = self.scale_value * self.growth_factor
            if math.isfinite(float(torch.tensor(grown, dtype=torch.float32))):
                self.scale_value = grown
            self.growth_tracker = 0
    self.found_inf.clear()

# %% [markdown]
# ### Checked against `torch.amp.GradScaler("cpu")`
#
# One run, three scalers: the notebook's from scratch, the library's `LossScaler` (the hardened version in
# `efftrain_lib/precision.py`: argument checks, several optimizers, sparse gradients, clear errors, and the
# fused check-and-unscale foreach kernel torch itself uses, so it costs no more than GradScaler) and
# PyTorch's. A small MLP under fp16 autocast, AdamW, `unscale_` then clipping, 40 steps, `growth_interval` 4,
# with inf or NaN written into a gradient at chosen steps. Same scale after every step, same skipped steps,
# bit-identical final parameters?

# %%
INJECT = {3: math.inf, 4: math.nan, 10: math.inf, 11: math.inf, 12: math.nan, 25: math.inf}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).to(device)


def injected_run(scaler, steps=40):
    model = mlp()
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=generator).to(device), torch.randn(64, 4, generator=generator).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scales, skipped = [], []
    for step in range(steps):
        with torch.autocast(device.type, dtype=torch.float16):
            loss = F.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        if step in INJECT:
            model[0].weight.grad[0, 0] = INJECT[step]
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        before = model[2].weight.detach().clone()
        scaler.step(optimizer)
        scaler.update()
        if torch.equal(before, model[2].weight):
            skipped.append(step)
        scales.append(scaler.get_scale())
        optimizer.zero_grad(set_to_none=True)
    return scales, skipped, [p.detach().clone() for p in model.parameters()]


from efftrain_lib.precision import LossScaler  # noqa: E402  (the library's version, from here on)

settings = dict(init_scale=2.0**10, growth_interval=4)
runs = {"from scratch": injected_run(ScratchScaler(**settings)),
        "library LossScaler": injected_run(LossScaler(**settings)),
        "torch.amp.GradScaler": injected_run(torch.amp.GradScaler(device.type, **settings))}

# %%
# NBVAL_CHECK_OUTPUT
ref = runs["torch.amp.GradScaler"]
print("skipped steps (GradScaler):", ref[1])
for name, (scales, skipped, params) in runs.items():
    print(f"{name:<22} same scales: {scales == ref[0]}  same skipped steps: {skipped == ref[1]}  "
          f"parameters torch.equal: {all(torch.equal(a, b) for a, b in zip(params, ref[2]))}")

# %%
fig, ax = plt.subplots(figsize=(8, 3))
ax.step(range(len(ref[0])), runs["from scratch"][0], where="post", label="from scratch", lw=3, alpha=0.5)
ax.step(range(len(ref[0])), ref[0], where="post", label="torch.amp.GradScaler", color="black", lw=1)
ax.scatter(ref[1], [ref[0][i] for i in ref[1]], color="red", zorder=3, label="skipped (inf/NaN injected)")
ax.set(yscale="log", xlabel="step", ylabel="scale after update()", title="Dynamic loss scale: back off, grow")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### Unscale before clipping
#
# `clip_grad_norm_(params, 1.0)` on **scaled** gradients clips S x the true norm, which shrinks the true
# gradient to 1/S of the limit. The update from one step, clipping before vs after `unscale_`:

# %%
def update_norm(unscale_first):
    model = mlp()
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=generator).to(device), torch.randn(64, 4, generator=generator).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = LossScaler(init_scale=2.0**16)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    with torch.autocast(device.type, dtype=torch.float16):
        loss = F.mse_loss(model(x).float(), y)
    scaler.scale(loss).backward()
    if unscale_first:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5).item()
    scaler.step(optimizer)
    scaler.update()
    return norm, (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()


for unscale_first in (True, False):
    norm, moved = update_norm(unscale_first)
    print(f"{'unscale_, then clip' if unscale_first else 'clip, then step unscales':<26} norm seen by the clip "
          f"{norm:10.4g}, parameter update {moved:.3g}")

# %% [markdown]
# ### Exercise 3.5: state_dict, resuming a run
#
# The scale and the growth tracker are training state: a resumed run must restart where it stopped, not at
# 65536 with a fresh count. Write `state_dict()` with GradScaler's keys (`scale`, `growth_factor`,
# `backoff_factor`, `growth_interval`, `_growth_tracker`) and a `load_state_dict(d)` that resumes mid-interval,
# from yours or from GradScaler's.

# %%
check("loss_scaling", exercise="3.5")

# %% [markdown]
# The notebook's `state_dict`, and the library's scaler resuming across both kinds of scaler:

# %%
@add_to_class(ScratchScaler)
def state_dict(self):
    return {"scale": self.scale_value, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval, "_growth_tracker": self.growth_tracker}

# %%
# NBVAL_CHECK_OUTPUT
halfway = LossScaler(**settings)
injected_run(halfway, steps=18)
print("saved:", halfway.state_dict())
resumed = torch.amp.GradScaler(device.type)
resumed.load_state_dict(halfway.state_dict())
print("loaded into torch.amp.GradScaler:", resumed.state_dict())
back = LossScaler()
back.load_state_dict(resumed.state_dict())
print("and back into LossScaler:", back.state_dict() == halfway.state_dict())

# %% [markdown]
# ### Clear errors
#
# The library's `LossScaler` refuses settings that break the feedback loop, and misuse that would silently
# train wrong (GradScaler itself accepts most of these):

# %%
# NBVAL_CHECK_OUTPUT
def error_of(call):
    try:
        call()
    except (ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


param = nn.Parameter(torch.ones(3))
sgd = torch.optim.SGD([param], lr=0.1)


def unscale_twice():
    scaler = LossScaler()
    scaler.scale(param.sum()).backward()
    scaler.unscale_(sgd)
    scaler.unscale_(sgd)


half_param = nn.Parameter(torch.ones(3, dtype=torch.float16))
half_param.grad = torch.ones(3, dtype=torch.float16)
for label, call in [
    ("growth_factor=1.0", lambda: LossScaler(growth_factor=1.0)),
    ("backoff_factor=1.5", lambda: LossScaler(backoff_factor=1.5)),
    ("growth_interval=0", lambda: LossScaler(growth_interval=0)),
    ("init_scale=inf", lambda: LossScaler(init_scale=math.inf)),
    ("unscale_ twice", unscale_twice),
    ("fp16 parameters", lambda: LossScaler().unscale_(torch.optim.SGD([half_param], lr=0.1))),
]:
    print(f"{label:<19} -> {error_of(call)}")

# %% [markdown]
# ### On a GPU
#
# The same comparison against `torch.amp.GradScaler("cuda")`, where a CUDA device is present:

# %%
if torch.cuda.is_available():
    cuda_runs = {}
    for name, make in (("LossScaler", LossScaler), ("GradScaler", lambda **kw: torch.amp.GradScaler("cuda", **kw))):
        cuda_runs[name] = injected_run(make(**settings))
    a, b = cuda_runs["LossScaler"], cuda_runs["GradScaler"]
    print("CUDA: same scales", a[0] == b[0], "| same skipped", a[1] == b[1],
          "| parameters equal", all(torch.equal(p, q) for p, q in zip(a[2], b[2])))
else:
    print("No CUDA device: skipped. tests/test_precision.py runs this comparison on 'cuda' when one is present.")

# %% [markdown]
# ## 6. The seed's GradScaler, run
#
# The seed notes include a "manual GradScaler". Here it is, reproduced as the **seed's version** (names and
# logic as in the notes, the Chinese print kept), to run next to `torch.amp.GradScaler`:

# %%
class SeedGradScaler:
    """The seed's version, as written in the notes (do not use)."""

    def __init__(self, init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.scale = init_scale
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.step_count = 0
        self.inf_count = 0

    def scale_loss(self, loss):
        return loss * self.scale

    def unscale_grads(self, optimizer):
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.data /= self.scale

    def step(self, optimizer):
        has_inf = False
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    if torch.isinf(param.grad).any() or torch.isnan(param.grad).any():
                        has_inf = True
                        break
        if has_inf:
            self.inf_count += 1
            self.scale *= self.backoff_factor
            print(f"发现 inf/nan,scale 降低到 {self.scale}")
            return False
        else:
            optimizer.step()
            self.step_count += 1
            if self.step_count % self.growth_interval == 0:
                self.scale *= self.growth_factor
            return True

    def update(self):
        pass  # 在 step 中已处理

# %% [markdown]
# **Bug 1: `step` without unscaling.** The notes' `step` never unscales; only a caller who remembers
# `unscale_grads` gets true gradients. Called the way `GradScaler` is (scale, backward, step, update), the
# optimizer sees gradients 65536 times too large. One SGD step from the same start:

# %%
def first_step_update(scaler, scale_fn):
    model = mlp()
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=generator).to(device), torch.randn(64, 4, generator=generator).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model[2].weight.detach().clone()
    scale_fn(scaler, F.mse_loss(model(x), y)).backward()
    scaler.step(optimizer)
    scaler.update()
    return (model[2].weight.detach() - before).norm().item()


seed_update = first_step_update(SeedGradScaler(), lambda s, loss: s.scale_loss(loss))
torch_update = first_step_update(torch.amp.GradScaler(device.type), lambda s, loss: s.scale(loss))
ratio = seed_update / torch_update
print(f"update norm, seed's scaler: {seed_update:.4g}; torch.amp.GradScaler: {torch_update:.4g}; ratio {ratio:.0f}")
assert abs(ratio / 65536 - 1) < 1e-3, "the seed's step should apply the gradient x the scale (65536)"

# %% [markdown]
# **Bug 2: growth counted over all steps, not consecutive ones.** `step_count` counts successful steps
# and is never reset on overflow, so the scale grows every `growth_interval` successful steps in total,
# however many overflows happened in between. With `growth_interval` 3 and overflows every third step, the
# seed's scale keeps growing into more overflows; torch's never grows (3 clean steps in a row never happen):

# %%
# NBVAL_CHECK_OUTPUT
def scripted(scaler, pattern, unscale, scale_fn):
    param = nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([param], lr=0.01)
    out = []
    for kind in pattern:
        scale_fn(scaler, param.sum()).backward()
        if kind == "I":
            param.grad[0] = math.inf
        unscale(scaler, optimizer)
        scaler.step(optimizer)
        scaler.update()
        out.append(scaler.scale if isinstance(scaler, SeedGradScaler) else scaler.get_scale())
        optimizer.zero_grad()
    return out


pattern = "FFIFFIFFIFFIFFI"
seed_scales = scripted(SeedGradScaler(init_scale=1024.0, growth_interval=3), pattern,
                       lambda s, o: s.unscale_grads(o), lambda s, loss: s.scale_loss(loss))
torch_scales = scripted(torch.amp.GradScaler(device.type, init_scale=1024.0, growth_interval=3), pattern,
                        lambda s, o: s.unscale_(o), lambda s, loss: s.scale(loss))
print("steps (I = inf):", " ".join(pattern))
print("seed  :", [int(s) for s in seed_scales])
print("torch :", [int(s) for s in torch_scales])

# %% [markdown]
# (The seed prints its Chinese line at each overflow.) The seed's scale keeps climbing back: it grows after every
# 3 successful steps *in total*, so it stays near where it started and runs into overflow after overflow. Torch's
# never grows here (3 clean steps in a row never happen) and backs off until the overflows stop. With real
# overflows, which come from a scale that is too high, the seed's rule keeps re-growing into them.
#
# **Bug 3: an `update()` that does nothing.** The notes move the backoff into `step` and leave `update` as
# `pass`. That looks harmless until a step uses two optimizers (or `step` is called twice): each overflowing
# `step` call backs off again, where torch backs off once per iteration in `update()`:

# %%
# NBVAL_CHECK_OUTPUT
def two_optimizers(scaler, scale_fn, unscale):
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt_a, opt_b = torch.optim.SGD([a], lr=0.1), torch.optim.SGD([b], lr=0.1)
    scale_fn(scaler, a.sum() + b.sum()).backward()
    a.grad[0], b.grad[0] = math.inf, math.inf
    for opt in (opt_a, opt_b):
        unscale(scaler, opt)
        scaler.step(opt)
    scaler.update()
    return scaler.scale if isinstance(scaler, SeedGradScaler) else scaler.get_scale()


print("one overflowing iteration, two optimizers, from 1024:")
print("  seed :", two_optimizers(SeedGradScaler(init_scale=1024.0), lambda s, l: s.scale_loss(l),
                                 lambda s, o: s.unscale_grads(o)))
print("  torch:", two_optimizers(torch.amp.GradScaler(device.type, init_scale=1024.0), lambda s, l: s.scale(l),
                                 lambda s, o: s.unscale_(o)))

# %% [markdown]
# Two more, visible in the code: `unscale_grads` can run twice and silently divides twice, and
# `scale_loss` multiplies by a Python float, so an fp16 loss overflows at 65504 (`2.0 x 65536` in fp16 is
# inf). The exercises' mistake catalog (`tests/grading/mistakes/loss_scaling/seed_grad_scaler.py`) runs this
# class through the graders: each bug fails the check that names it (no argument validation, unscaling twice,
# fp16 accepted, step without unscaling, growth counter not reset on overflow, scale growing to inf).
#
# ## 7. Train: fp32, bf16 autocast, fp16 with the scaler
#
# The tiny transformer, pretrained on the sonnets, fine-tuned on prose for 24 steps, the same batches in
# every run (8 x 32 characters, AdamW lr 1e-3, gradients clipped at 1.0):
#
# - **fp32**: no autocast;
# - **bf16 autocast**, no scaler (section 4: none needed);
# - **fp16 autocast + our LossScaler**, started deliberately high (2^24) with `growth_interval` 8, so that
#   the run shows the scaler at work; and the same with `torch.amp.GradScaler` to check the two agree.
#
# On CPU fp16 matmuls are slow (no fp16 kernels to speak of): we keep the run short. On a GPU fp16 and bf16
# are the fast ones.
#
# ### Exercise 3.6: train_step, every option together
#
# One step with everything this chapter taught: `train_step(model, optimizer, scaler, inputs, targets, loss_fn,
# max_grad_norm=None, autocast_dtype=torch.float16, scheduler=None)` returns `(loss, stepped)`: forward under
# autocast (`None`: fp32), scaled backward (`scaler=None`: no scaling, fine for fp32 and bf16), `unscale_`
# before clipping, `step`, `update`, the scheduler once per call (also after a skipped step: a schedule counts
# iterations), `zero_grad`. `stepped` is a bool, with a `torch.amp.GradScaler` too (its `step()` returns None
# either way; its scale backs off exactly when it skipped). The grader runs every pair of autocast dtype, scaler
# (none, GradScaler, LossScaler), clipping, scheduler and an overflowing batch against the library's step.

# %%
check("loss_scaling", exercise="3.6")

# %% [markdown]
# The library's version is `precision.train_step`, a thin wrapper around the course's one training step
# (`training.training_step`), which the loop `training.train` runs below.

# %%
from efftrain_lib.precision import train_step  # noqa: E402
from efftrain_lib.training import evaluate, train  # noqa: E402

STEPS = 24
RUNS = {
    "fp32": dict(autocast_dtype=None, scaler=None),
    "bf16 autocast": dict(autocast_dtype=torch.bfloat16, scaler=None),
    "fp16 + LossScaler": dict(autocast_dtype=torch.float16, scaler=LossScaler(init_scale=2.0**24, growth_interval=8)),
    "fp16 + GradScaler": dict(autocast_dtype=torch.float16,
                              scaler=torch.amp.GradScaler(device.type, init_scale=2.0**24, growth_interval=8)),
}


def finetune(autocast_dtype, scaler, steps=STEPS, desc="train"):
    seed_everything(0)
    model = load_pretrained().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    log = train(model, train_batch, steps=steps, optimizer=optimizer, autocast_dtype=autocast_dtype, scaler=scaler,
                max_grad_norm=1.0, desc=desc)
    return model, log


trained = {}
for label, spec in RUNS.items():
    model, log = finetune(**spec, desc=label)
    trained[label] = dict(model=model, log=log, val=evaluate(model, val_batches))

# %%
# NBVAL_CHECK_OUTPUT
ours, theirs = trained["fp16 + LossScaler"], trained["fp16 + GradScaler"]
print("fp16 runs, LossScaler vs GradScaler: same losses", ours["log"].losses == theirs["log"].losses,
      "| same scales", ours["log"].scales == theirs["log"].scales,
      "| same skipped steps", ours["log"].skipped_steps == theirs["log"].skipped_steps,
      "| parameters equal", all(torch.equal(a, b) for a, b in zip(ours["model"].parameters(),
                                                                  theirs["model"].parameters())))

# %%
rows = ["| run | median step | final train loss | val loss | skipped steps |", "|---|---|---|---|---|"]
for label, result in trained.items():
    log = result["log"]
    rows.append(f"| {label} | {log.median_step_seconds * 1e3:.1f} ms | {log.losses[-1]:.4f} | {result['val']:.4f} "
                f"| {log.skipped_steps or 'none'} |")
display(Markdown("\n".join(rows) + f"\n\nDevice: {describe(device)}."))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.3), layout="constrained")
for label, result in trained.items():
    if label != "fp16 + GradScaler":
        ax1.plot(result["log"].losses, label=label)
ax1.set(xlabel="step", ylabel="training loss", title="Loss (a skipped step does not train)")
ax1.legend(fontsize=8)
log = ours["log"]
ax2.step(range(STEPS), log.scales, where="post", label="scale in force")
ax2.scatter(log.skipped_steps, [log.scales[i] for i in log.skipped_steps], color="red", zorder=3,
            label="skipped (overflow)")
ax2.set(yscale="log", xlabel="step", ylabel="loss scale", title="fp16: the scale finds its level")
ax2.legend(fontsize=8)
plt.show()
gap = max(abs(a - b) for a, b in zip(trained["fp32"]["log"].losses, trained["bf16 autocast"]["log"].losses))
print(f"fp32 vs bf16 training loss: largest difference over {STEPS} steps {gap:.4f}. The fp16 run skipped "
      f"{len(ours['log'].skipped_steps)} of {STEPS} steps (its scale started too high on purpose), so it trails by as many.")

# %% [markdown]
# ## 8. Does mixed precision halve memory?
#
# The seed's table says mixed precision halves "model + gradient" memory ("FP16, 减半"), and "one line of
# code halves memory". One training step of each kind under the course's memory meter (CPU: exact
# accounting of weights, gradients, optimizer state, tensors saved for backward, and the cast weight copies
# autocast saves), at the step's peak:

# %%
from efftrain_lib.liveplot import plot_breakdowns  # noqa: E402
from efftrain_lib.meter import MemoryMeter  # noqa: E402


def measured_step(autocast_dtype, scaler):
    seed_everything(0)
    model = load_pretrained().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    meter = MemoryMeter()
    inputs, targets = (t.to(device) for t in get_batch(0))
    for _ in range(2):  # the second step: Adam's state exists
        train_step(model, optimizer, scaler, inputs, targets, language_model_loss, None, autocast_dtype, meter=meter)
    return meter.last


records = {"fp32": measured_step(None, None), "bf16 autocast": measured_step(torch.bfloat16, None),
           "fp16 + scaler": measured_step(torch.float16, LossScaler())}
peaks = {label: record.peak for label, record in records.items()}
# Each category where it is largest: gradients after backward, saved tensors at the end of forward.
where = {"weights": "peak", "gradients": "backward", "optimizer_state": "peak", "activations": "forward",
         "cast_weights": "forward"}
rows = ["| category (when) | " + " | ".join(peaks) + " | bf16 / fp32 |", "|---" * (len(peaks) + 2) + "|"]
for c, when in list(where.items()) + [("total", "peak")]:
    values = [getattr(r.peak if when == "peak" else r.sample(when), c) for r in records.values()]
    ratio = f"{values[1] / values[0]:.2f}" if values[0] else "new"
    rows.append(f"| {c} ({when}) | " + " | ".join(f"{v / 2**20:.3f} MiB" for v in values) + f" | {ratio} |")
display(Markdown("\n".join(rows) + f"\n\nSource: {peaks['fp32'].source}."))
_ = plot_breakdowns(peaks)
plt.show()

# %% [markdown]
# What halves and what does not:
#
# - **weights, gradients, optimizer state: unchanged.** The master weights are fp32, so are their gradients
#   and Adam's m and v. Mixed precision does not touch the 16 bytes per parameter of Adam training.
# - **activations** saved for backward shrink, but not to half: the RMSNorms compute in fp32 and the loss
#   upcasts the logits, so some saved tensors stay fp32.
# - **cast weights** are new: autocast saves a 16-bit copy of every weight it casts, for backward.
#
# On a 7B model the model states dominate at small batch (the LoRA chapter's 112 GB for fp32 Adam), and those do
# not halve: EleutherAI counts 16 bytes/param for mixed-precision Adam, Hugging Face 18 (the fp32 copy plus a
# 16-bit one). What halves is activation memory, which dominates at long sequences and large batches.

# %%
LLAMA_7B = 6_738_415_616  # parameters (the LoRA chapter computes it from the shapes)
for label, bytes_per_param in (("fp32 Adam (4 + 4 + 8)", 16), ("mixed precision, EleutherAI (2 + 2 + 12)", 16),
                               ("mixed precision, Hugging Face (4 + 2 + 4 + 8)", 18)):
    print(f"{label:<48} {bytes_per_param} bytes/param -> {LLAMA_7B * bytes_per_param / 1e9:6.1f} GB before activations")

# %% [markdown]
# ## 9. Live memory plot: fp32 vs bf16
#
# Memory within a training step, fp32 and bf16 autocast on one axis, while they train (the course's
# `LiveMemoryPlot`, fed by `training.train(..., autocast_dtype=...)`, bf16 on CPU):

# %%
from efftrain_lib.liveplot import LiveMemoryPlot  # noqa: E402

live = LiveMemoryPlot(title="Memory within a training step: fp32 vs bf16 autocast")
for label, autocast_dtype in (("fp32", None), ("bf16 autocast", low_precision_dtype(device))):
    seed_everything(0)
    model = load_pretrained().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    meter = MemoryMeter()
    train(model, train_batch, steps=6, optimizer=optimizer, autocast_dtype=autocast_dtype, meter=meter,
          on_step=live.attach(meter, label), desc=label)
live.finish()

# %% [markdown]
# ## 10. Myths vs measurement
#
# Each mixed precision claim of the seed notes, next to what this notebook measured.

# %%
fp32_peak, bf16_peak = peaks["fp32"], peaks["bf16 autocast"]
med = {label: r["log"].median_step_seconds * 1e3 for label, r in trained.items()}
act_fr = nf.representable_fractions(grads[pe.ACTIVATION_GRADS], "fp16")
act_bf = nf.representable_fractions(grads[pe.ACTIVATION_GRADS], "bf16")
def saved_acts(label):
    return records[label].sample("forward").activations


def model_states(label):
    record = records[label]
    return record.peak.weights + record.sample("backward").gradients + record.peak.optimizer_state



myths = [
    ("Mixed precision halves model + gradient memory (FP16, 减半)",
     f"Weights + gradients + Adam state: {model_states('fp32') / 2**20:.2f} MiB in fp32, "
     f"{model_states('bf16 autocast') / 2**20:.2f} MiB with bf16 autocast (ratio "
     f"{model_states('bf16 autocast') / model_states('fp32'):.2f}): fp32 master weights. Activations saved for backward: "
     f"{saved_acts('bf16 autocast') / saved_acts('fp32'):.2f} x, plus "
     f"{records['bf16 autocast'].sample('forward').cast_weights / 2**20:.2f} MiB of cast "
     "weight copies."),
    ("One line of code halves memory",
     f"Peak step memory {bf16_peak.total / fp32_peak.total:.2f} x fp32's here. The saving grows with batch and "
     "sequence length (activations), never below 16 bytes/param of model states with Adam."),
    ("Forward/backward in FP16: fast",
     f"On this CPU: fp32 {med['fp32']:.1f} ms/step, bf16 {med['bf16 autocast']:.1f} ms, fp16 "
     f"{med['fp16 + LossScaler']:.1f} ms. Speed depends on hardware: tensor cores make fp16/bf16 fast on GPUs; "
     "CPUs have few fp16 kernels."),
    ("FP16's smallest positive number is ~6e-8",
     f"Right: 2^-24 = {nf.format_info('fp16').min_subnormal:.3g}, a subnormal with 1 significant bit. The smallest "
     f"normal is 2^-14 = {nf.format_info('fp16').min_normal:.3g}."),
    ("Gradients can underflow to 0 in FP16",
     f"Measured: {100 * act_fr['underflow']:.2f}% of the activation gradients flush to 0 and "
     f"{100 * act_fr['subnormal']:.0f}% are subnormal at scale 1; at 2^16 almost none."),
    ("BF16 has a larger range, no scaling needed",
     f"Right: {100 * act_bf['underflow']:.1f}% flush to 0 in bf16; the bf16 run trained without a scaler to val loss "
     f"{trained['bf16 autocast']['val']:.4f} (fp32: {trained['fp32']['val']:.4f})."),
    ("Parameter updates in FP32 (保证精度)",
     f"Right, and needed with round-to-nearest: one AdamW step on bf16 weights changed only "
     f"{100 * adamw_shares['bf16'][1]:.0f}% of them at lr 1e-5 (section 4); fp32 master weights change all. Or round "
     f"bf16 weights stochastically: over 20 steps they kept {kept['bf16, stochastic rounding']:.2f} of the intended "
     f"move, against {kept['bf16, round to nearest']:.2f} with round-to-nearest (Exercise 3.7)."),
    ("The manual GradScaler grows the scale periodically (定期增大 scale)",
     "Its counter is never reset on overflow: it grows after every growth_interval successful steps in total, "
     "not consecutive ones, and its step() never unscales (section 6)."),
]
display(Markdown("| claim (seed) | measured here |\n|---|---|\n" + "\n".join(f"| {c} | {m} |" for c, m in myths)))

# %% [markdown]
# ## 11. Exercises, all at once
#
# The chapter's exercises, where they come up: 3.1 `LossScaler` constructor, `scale`, `get_scale`; 3.2
# `unscale_`; 3.3 `step`; 3.4 `update`; 3.5 `state_dict` / `load_state_dict` (section 5); 3.6 `train_step`
# with every option (section 7); 3.7 `stochastic_round_to_bf16` (section 4; the notebook never shows an
# answer to this one). All of them at once (also in a terminal: `python -m efftrain_lib.grade loss_scaling`):

# %%
check("loss_scaling")

# %% [markdown]
# The reference answers (`solutions/loss_scaling.py`) pass every check. Peek only after trying:

# %%
check("loss_scaling", impl="solutions")

# %% [markdown]
# ## 12. Interview drill
#
# The chapter's cards, from the seed's questions and more. Reveal, grade yourself; numeric answers are
# checked. Missed cards come back first next time (also in a terminal:
# `python -m efftrain_lib.drill --chapter precision`).

# %%
from efftrain_lib.drill import quiz  # noqa: E402

quiz("precision")

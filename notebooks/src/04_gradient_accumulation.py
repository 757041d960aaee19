# %% [markdown]
# # Chapter 4: Gradient accumulation — exactly a big batch, or not
#
# **Gradient accumulation** runs k small micro-batches, lets `backward()` add their gradients into
# `.grad`, and steps the optimizer once. The seed notes: *"用小 batch 模拟大 batch"* (simulate a big batch
# with small ones), *"等效 batch size = mini_batch_size × accumulation_steps"*, cost: *"训练变慢"*
# (training gets slower). In this chapter you will:
#
# - **prove the equivalence**: k micro-batches with each loss divided by k give the big batch's gradient;
# - **break it three ways**: the last partial window (the seed's `train_epoch`), variable-length
#   sequences (the 2024 loss-normalization bug), and BatchNorm;
# - **fix it** with one rule: sum the loss, divide by the token count of the whole window, and **write the fix
#   yourself** with mixed precision, clipping and a schedule (what happens per micro-batch, what once per window);
# - **count as you go**: the same step over a stream you may read only one micro-batch at a time;
# - **measure** micro-batch size against memory and time, with a slider and a live memory plot;
# - **check the folklore** (myths vs measurement), then **drill**.
#
# The exercises live in `exercises/accumulation.py` (open it in JupyterLab's editor beside this notebook). Each
# comes where the chapter needs it, followed by a `check(...)` cell that grades your file afresh: every
# optimizer step compared with a full-batch step and with the library's step (gradient, learning rate,
# GradScaler calls, the dtype of every forward), the likely mistake named. Until you start, every check reports
# "not implemented yet", and the chapter goes on with the library's version.
#
# Every number below comes from a run in this notebook. It executes in well under a minute on 2 CPU cores.

# %%
import copy
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from IPython.display import Markdown, display
from tqdm.auto import tqdm

from efftrain_lib import data
from efftrain_lib.devices import describe, get_device, seed_everything, use_one_cpu_thread
from efftrain_lib.grade import check
from efftrain_lib.models import language_model_loss, load_pretrained

device = get_device()
seed_everything(0)
use_one_cpu_thread(device)  # steady timings on a tiny model (see its docstring)
print(describe(device))

# %% [markdown]
# ## 1. Why accumulate: the effective batch
#
# A training step keeps the activations of its whole batch alive until backward. When a batch of 64
# sequences does not fit, run 8 micro-batches of 8 and step once: **effective batch = micro-batch × k**
# (× the number of data-parallel replicas). Only activations depend on the micro-batch; weights,
# gradients and optimizer state do not (section 10 measures this).
#
# Our subject is the tiny LLaMA-style transformer pretrained on Shakespeare's sonnets (4 layers,
# d = 64), fine-tuned on American founding documents with next-character prediction.

# %%
model = load_pretrained().to(device)
tokens, _ = data.split_tokens(data.encode(data.load_text("founding_documents")))
get_batch = data.batch_sampler(tokens, batch_size=16, seq_len=64, seed=0)
inputs, labels = get_batch(0)
print("one batch:", tuple(inputs.shape), "token ids ->", tuple(model(inputs[:1]).shape), "logits per sequence")

# %% [markdown]
# ## 2. Equivalence: k micro-batches, loss / k
#
# The loss of the batch is a mean over its B examples, `L = (1/B) Σ l_i`, and gradients are linear. Cut the
# batch into k micro-batches of b = B/k: each micro-batch mean is `(1/b) Σ_{i in j} l_i`, so
#
# `L = (1/k) Σ_j mean_j` and `∇L = Σ_j ∇(mean_j / k)`.
#
# `backward()` adds into `.grad`, so backpropagating `mean_j / k` for every micro-batch leaves exactly `∇L`
# in `.grad`. Build both and compare them, karpathy-style: exact, approximately equal, and the largest
# difference.

# %%
def gradients(model):
    """A copy of every parameter's .grad, by name."""
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def full_batch_gradients(model, inputs, labels):
    model.zero_grad(set_to_none=True)
    language_model_loss(model(inputs), labels).backward()
    return gradients(model)


def accumulated_gradients(model, micro_batches, divide_by):
    model.zero_grad(set_to_none=True)                 # once, before the window
    for x, y in micro_batches:
        (language_model_loss(model(x), y) / divide_by).backward()   # .grad += this micro-batch's share
    return gradients(model)


def cmp(name, ours, ref, tolerance=1e-6):
    exact = all(torch.equal(ours[k], ref[k]) for k in ref)
    maxdiff = max((ours[k] - ref[k]).abs().max().item() for k in ref)
    print(f"{name:<38} exact: {str(exact):5}  approx: {str(maxdiff <= tolerance):5}  maxdiff: {maxdiff:.1e}")
    return maxdiff


k = 4
micro_batches = list(zip(inputs.chunk(k), labels.chunk(k)))          # 4 micro-batches of 4 sequences
reference = full_batch_gradients(model, inputs, labels)
equivalence_diff = cmp("k=4 micro-batches, loss / k", accumulated_gradients(model, micro_batches, k), reference)
not_divided_diff = cmp("k=4 micro-batches, loss not divided", accumulated_gradients(model, micro_batches, 1), reference)
ratio = (accumulated_gradients(model, micro_batches, 1)["lm_head.weight"] / reference["lm_head.weight"]).median().item()
print(f"not divided: the gradient is {ratio:.3f} x the big batch's (k = {k})")

# %% [markdown]
# Equal up to float rounding: the same sums, added in another order, differ in the last bits (a few 1e-8
# here, for gradients of size 1e-2). Not divided, the gradient is exactly k times too large: like a
# k-times larger learning rate, and a clipping threshold that now means something else.

# %%
# NBVAL_CHECK_OUTPUT
print("accumulated == big batch within 1e-6:", equivalence_diff <= 1e-6)
print("not divided == big batch within 1e-6:", not_divided_diff <= 1e-6)

# %% [markdown]
# ## 3. The last partial window
#
# Data rarely divides into whole windows. With 10 micro-batches and k = 4 the windows hold 4, 4 and **2**.
# The seed's `train_epoch` divides every loss by `accumulation_steps` and, at the end, steps on the
# leftover micro-batches. That last step's gradient is `Σ_{j≤m} ∇mean_j / k`: **m/k of the mean
# gradient**, here half a step. Run the seed's loop (rewritten, same logic), recording the gradient it
# steps with, and compare each step with a full-batch step on the same window:

# %%
def seed_style_epoch(model, batches, accumulation_steps):
    """The seed's train_epoch logic: loss / k always, step every k, and once more for the leftover."""
    step_gradients = []
    model.zero_grad(set_to_none=True)
    for batch_idx, (x, y) in enumerate(batches):
        (language_model_loss(model(x), y) / accumulation_steps).backward()
        if (batch_idx + 1) % accumulation_steps == 0:
            step_gradients.append(gradients(model))   # (optimizer.step() would go here)
            model.zero_grad(set_to_none=True)
    if (batch_idx + 1) % accumulation_steps != 0:     # the leftover micro-batches, still divided by k
        step_gradients.append(gradients(model))
        model.zero_grad(set_to_none=True)
    return step_gradients


def window_gradients(model, window):
    return full_batch_gradients(model, torch.cat([x for x, _ in window]), torch.cat([y for _, y in window]))


def scale_factor(got, ref):
    """c such that got ≈ c * ref (least squares over every gradient entry)."""
    g = torch.cat([got[k].flatten() for k in ref])
    r = torch.cat([ref[k].flatten() for k in ref])
    return (g @ r / (r @ r)).item()


batches = [get_batch(step) for step in range(1, 6)]                    # 5 batches of 16
micro = [pair for x, y in batches for pair in zip(x.chunk(2), y.chunk(2))]    # 10 micro-batches of 8
windows = [micro[i:i + 4] for i in range(0, len(micro), 4)]
seed_steps = seed_style_epoch(model, micro, accumulation_steps=4)
seed_factors = [scale_factor(g, window_gradients(model, w)) for g, w in zip(seed_steps, windows)]
print("window sizes:", [len(w) for w in windows])
print("seed's step gradient / full-batch gradient:", [f"{c:.3f}" for c in seed_factors])

# %% [markdown]
# The fix: divide each window by its **own** size, m for the leftover (or, better, by its own token
# count: next section). Or drop the partial window, as `drop_last=True` does. Note two more
# inconsistencies in the seed: `train_step` clips gradients but `train_epoch` does not, and
# `train_step` never flushes a partial window at all.

# %%
def fixed_epoch(model, batches, accumulation_steps):
    step_gradients = []
    for start in range(0, len(batches), accumulation_steps):
        window = batches[start:start + accumulation_steps]
        step_gradients.append(accumulated_gradients(model, window, divide_by=len(window)))   # m, not k
    return step_gradients


fixed_factors = [scale_factor(g, window_gradients(model, w)) for g, w in zip(fixed_epoch(model, micro, 4), windows)]
print("fixed: step gradient / full-batch gradient:", [f"{c:.3f}" for c in fixed_factors])

# %%
# NBVAL_CHECK_OUTPUT
print("seed's leftover step is m/k = 2/4 of the right one:", abs(seed_factors[-1] - 0.5) < 1e-4)
print("fixed: every step equals a full-batch step:", all(abs(c - 1) < 1e-4 for c in fixed_factors))

# %% [markdown]
# ## 4. Variable-length sequences: the 2024 loss-normalization bug
#
# Dividing by k is right when every micro-batch holds the **same number of tokens that count**. Language
# models pad: a batch of short replies has far fewer labelled tokens than a batch of long documents
# (padding is labelled -100 and ignored). The token-mean of the big batch is `Σ_all l_t / Σ_g N_g`. In 2024
# Hugging Face's Trainer and other trainers computed `(1/G) Σ_g (Σ_{t in g} l_t / N_g)`, the **mean of
# per-micro-batch means** (HF blog "gradient_accumulation"; Unsloth "Bug Fixes in LLM Training").
# REFERENCE.md's numeric example: token counts 1 and 3, losses 2 and 1, 1, 1:

# %%
# NBVAL_CHECK_OUTPUT
micro_losses = [torch.tensor([2.0]), torch.tensor([1.0, 1.0, 1.0])]
mean_of_means = sum(l.mean() for l in micro_losses) / len(micro_losses)
token_mean = sum(l.sum() for l in micro_losses) / sum(len(l) for l in micro_losses)
print(f"mean of micro-batch means: {mean_of_means.item():.2f}   token mean of the window: {token_mean.item():.2f}")

# %% [markdown]
# The lone token of the short micro-batch weighs 1/2; each token of the long one 1/6. Now on the tiny
# transformer, with padded batches of really unequal token counts: short clauses of the sonnets (cut at
# commas) next to full 64-character windows of prose.

# %%
PAD_ID = 0  # the newline character; its label is -100, so it never counts


def padded_batch(texts, seq_len=64):
    """Next-character examples, right-padded: labels are -100 where there is no next character."""
    ids = torch.full((len(texts), seq_len), PAD_ID)
    targets = torch.full((len(texts), seq_len), -100)
    for row, text in enumerate(texts):
        encoded = data.encode(text[: seq_len + 1])
        ids[row, : len(encoded) - 1] = encoded[:-1]
        targets[row, : len(encoded) - 1] = encoded[1:]
    return ids, targets


clauses = [c.strip() for line in data.load_text("sonnets").splitlines() for c in line.split(",") if len(c.strip()) > 6]
prose = data.load_text("founding_documents").replace("\n", " ")
long_texts = [prose[i * 97: i * 97 + 65] for i in range(12)]
window = [
    padded_batch(clauses[0:4]),                          # short clauses
    padded_batch(long_texts[0:4]),                       # long prose
    padded_batch(clauses[4:6] + long_texts[4:6]),        # a mix
    padded_batch(clauses[6:10]),
]
counts = [int((y != -100).sum()) for _, y in window]
print("labelled tokens per micro-batch:", counts, "  total:", sum(counts))

big_inputs, big_labels = torch.cat([x for x, _ in window]), torch.cat([y for _, y in window])
reference = full_batch_gradients(model, big_inputs, big_labels)
naive = accumulated_gradients(model, window, divide_by=len(window))      # each micro-batch mean / k
naive_diff = cmp("mean of micro-batch means (naive)", naive, reference)
with torch.no_grad():
    naive_loss = sum(language_model_loss(model(x), y) for x, y in window).item() / len(window)
    true_loss = language_model_loss(model(big_inputs), big_labels).item()
print(f"loss reported: naive {naive_loss:.4f}, true token mean {true_loss:.4f}")
print(f"naive gradient: {scale_factor(naive, reference):.3f} x the right one along it, plus a change of direction")

# %% [markdown]
# The naive gradient is not a rescaled version of the right one: it **points elsewhere**, because it
# re-weights tokens by the inverse size of their micro-batch. The fix is the big batch's own arithmetic: sum
# each micro-batch's loss over its labelled tokens (`reduction="sum"`) and divide by the labelled-token count of
# the **whole window**, known before the first forward from the labels alone. Hugging Face's fix (transformers
# PR #34191) does exactly that, passing `num_items_in_batch` to a sum-reduced loss.
#
# ## 5. Write it: one window, one step
#
# A real step also scales the loss for fp16, clips and follows a schedule. With a `GradScaler` (chapter 3), the
# order inside a window matters:
#
# | per micro-batch | once per window |
# |---|---|
# | forward under autocast; loss normalized by the window | `scaler.unscale_(optimizer)` (before clipping) |
# | `scaler.scale(loss).backward()` | `clip_grad_norm_`; `scaler.step(optimizer)`; `scaler.update()` |
# | | `scheduler.step()`; `optimizer.zero_grad()` |
#
# Every micro-batch must be scaled by the **same** factor, so `.grad` holds one consistently scaled sum;
# updating the scale mid-window would mix two scales. Unscale once, then clip the true gradient of the window.
# A schedule counts optimizer steps, not micro-batches.
#
# ### Exercise 4.1: accumulation_step
#
# `accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None, scheduler=None,
# autocast_dtype=None)`: exactly one optimizer step whose gradient is that of the token-mean cross-entropy over
# every labelled position of the window (sections 2 and 4); the table's order with a scaler; the forward under
# `torch.autocast(dtype=autocast_dtype)` (`None`: fp32); return the window's loss; `ValueError` for an empty
# window, a window without labelled positions, and labels whose shape does not match the logits. Every option
# must keep working when the others are on: the grader runs every pair of them (fp32 / bf16 / fp16 with a
# scaler, GradScaler, clipping, scheduler, equal and unequal windows) against the library's step.

# %%
check("accumulation", exercise="4.1")

# %% [markdown]
# The heart of it, the notebook's whiteboard version, on the window above:

# %%
def window_normalized_gradients(model, window):
    """The fix: a sum-reduced loss divided by the token count of the whole window."""
    n_window = sum(int((y != -100).sum()) for _, y in window)
    model.zero_grad(set_to_none=True)
    for x, y in window:
        loss_sum = F.cross_entropy(model(x).reshape(-1, model.config.vocab_size), y.reshape(-1),
                                   ignore_index=-100, reduction="sum")
        (loss_sum / n_window).backward()
    return gradients(model)


fixed_diff = cmp("sum / window token count (fixed)", window_normalized_gradients(model, window), reference)

# %%
# NBVAL_CHECK_OUTPUT
print("fixed == big batch within 1e-6:", fixed_diff <= 1e-6)
print("naive == big batch within 1e-6:", naive_diff <= 1e-6)

# %% [markdown]
# ### Exercise 4.2: GradientAccumulator
#
# `GradientAccumulator(model, optimizer, accumulation_steps, *, scaler=None, max_grad_norm=None,
# scheduler=None, autocast_dtype=None)` with `train(batches) -> list[float]`: windows of k, one step each
# (your `accumulation_step`), the final partial window included and normalized by its own token count
# (section 3), every option passed to every window, the partial one too; `ValueError` for k < 1.

# %%
check("accumulation", exercise="4.2")

# %% [markdown]
# ## 6. The library's version, and bad input
#
# `efftrain_lib.accumulation` holds the hardened version: `accumulation_step` (one window, one step;
# optional GradScaler, clipping, scheduler, autocast and memory meter) and `GradientAccumulator` (windows
# of k over any sequence of batches, the partial window included, each normalized by its own token
# count). Same window, same answer as our from-scratch fix, and as the big batch:

# %%
from efftrain_lib.accumulation import GradientAccumulator, accumulation_step, split_batch


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it was asked to apply (to look inside a step)."""

    def __init__(self, model, **kwargs):
        self.names = {id(p): n for n, p in model.named_parameters()}
        super().__init__(model.parameters(), **kwargs)
        self.applied = []

    @torch.no_grad()
    def step(self, closure=None):
        self.applied.append({self.names[id(p)]: p.grad.clone() for g in self.param_groups for p in g["params"]})
        return super().step(closure)


probe = copy.deepcopy(model)
recorder = RecordingSGD(probe, lr=0.0)                 # lr 0: look, don't touch
window_loss = accumulation_step(probe, recorder, window)
library_diff = cmp("library accumulation_step", recorder.applied[0], reference)
print(f"returned loss {window_loss:.4f} (the window's token mean: {true_loss:.4f})")

# %% [markdown]
# **The real implementation: Hugging Face accelerate.** `Accelerator(gradient_accumulation_steps=k)` with
# `accumulator.accumulate(model)` divides each micro-batch loss by k in `accelerator.backward` and lets the
# optimizer step only every k-th call. On equal micro-batches that is exactly our computation. With
# unequal token counts, a token-mean loss through it is the mean of micro-batch means; passing it our
# window-normalized loss (times k, which accelerate divides back out) fixes it:

# %%
from accelerate import Accelerator


def accelerate_gradient(window, loss_fn):
    """The gradient accelerate's optimizer step applies after one window of accumulate()."""
    accelerator = Accelerator(gradient_accumulation_steps=len(window), cpu=device.type == "cpu")
    trial = copy.deepcopy(model)
    recorder = RecordingSGD(trial, lr=0.0)
    trial, optimizer = accelerator.prepare(trial, recorder)
    for x, y in window:
        with accelerator.accumulate(trial):
            accelerator.backward(loss_fn(trial, x, y))
            optimizer.step()                           # a no-op until the window's last micro-batch
            optimizer.zero_grad()
    return recorder.applied[-1]


def token_mean(trial, x, y):
    return language_model_loss(trial(x), y)


n_window = sum(int((y != -100).sum()) for _, y in window)


def window_normalized_times_k(trial, x, y):
    loss_sum = F.cross_entropy(trial(x).reshape(-1, trial.config.vocab_size), y.reshape(-1), ignore_index=-100,
                               reduction="sum")
    return loss_sum / n_window * len(window)


accelerate_equal = cmp("accelerate, equal micro-batches", accelerate_gradient(micro_batches, token_mean),
                       full_batch_gradients(model, inputs, labels))
accelerate_naive = cmp("accelerate, unequal, token mean", accelerate_gradient(window, token_mean), reference)
accelerate_fixed = cmp("accelerate, unequal, window-normalized", accelerate_gradient(window, window_normalized_times_k),
                       reference)

# %%
# NBVAL_CHECK_OUTPUT
print("library == big batch within 1e-6:", library_diff <= 1e-6)
print("accelerate == big batch (equal micro-batches):", accelerate_equal <= 1e-6)
print("accelerate == big batch (unequal, token-mean loss):", accelerate_naive <= 1e-6)
print("accelerate == big batch (unequal, window-normalized loss):", accelerate_fixed <= 1e-6)
all_ignored = [(x, torch.full_like(y, -100)) for x, y in window]
for attempt in [
    lambda: GradientAccumulator(probe, recorder, accumulation_steps=0),
    lambda: accumulation_step(probe, recorder, []),
    lambda: accumulation_step(probe, recorder, all_ignored),
    lambda: accumulation_step(probe, recorder, [(window[0][0], window[0][1].T)]),
]:
    try:
        attempt()
    except ValueError as error:
        print(f"ValueError: {error}\n")

# %% [markdown]
# ## 7. With mixed precision and a learning-rate schedule
#
# Section 5's order, on a real `GradScaler`. Updating the scale mid-window would mix two scales, and a real
# `GradScaler` refuses `update()` without a `step()`: it raises. But it does **not** catch the commoner slip,
# `step()` and `update()` after every micro-batch: that runs without a word and quietly turns accumulation off
# (k optimizer steps per window, shown below). We use `torch.amp.GradScaler("cpu")` and log its calls:

# %%
class LoggingScaler(torch.amp.GradScaler):
    def __init__(self, **kwargs):
        super().__init__("cpu", **kwargs)
        self.log = []

    def scale(self, outputs):
        self.log.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.log.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.log.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.log.append("update")
        return super().update(new_scale)

# %%
# NBVAL_CHECK_OUTPUT
scaler = LoggingScaler()
trial = copy.deepcopy(model)
accumulation_step(trial, torch.optim.SGD(trial.parameters(), lr=0.0), split_batch((inputs, labels), 4),
                  scaler=scaler, max_grad_norm=1.0)
print("one window of 4 micro-batches:", ", ".join(scaler.log))

# %% [markdown]
# Check against an **unaccumulated** run: the same 3 batches of 16, as 4 micro-batches of 4 and as one
# batch of 16, each with its own GradScaler and clipping at norm 1, SGD with momentum. In fp32 the two
# runs agree to rounding. Under bf16 autocast, matmuls round to 8 bits of mantissa, so micro-batches and
# the big batch round differently; the honest comparison is with bf16's own noise: how far the big
# batch in bf16 is from the big batch in fp32.

# %%
def run(micro_batch, autocast_dtype, windows=3):
    trial = copy.deepcopy(model)
    optimizer = torch.optim.SGD(trial.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", growth_interval=1)
    for step in range(windows):
        accumulation_step(trial, optimizer, split_batch(get_batch(100 + step), micro_batch), scaler=scaler,
                          max_grad_norm=1.0, autocast_dtype=autocast_dtype)
    return torch.cat([p.detach().flatten() for p in trial.parameters()]), scaler.get_scale()


runs = {(b, amp): run(b, torch.bfloat16 if amp else None) for b in (4, 16) for amp in (False, True)}
fp32_diff = (runs[4, False][0] - runs[16, False][0]).abs().max().item()
bf16_diff = (runs[4, True][0] - runs[16, True][0]).abs().max().item()
bf16_noise = (runs[16, True][0] - runs[16, False][0]).abs().max().item()
print(f"fp32: accumulated vs unaccumulated, parameters max |diff| = {fp32_diff:.1e}")
print(f"bf16: accumulated vs unaccumulated, parameters max |diff| = {bf16_diff:.1e} "
      f"(bf16 vs fp32, both unaccumulated: {bf16_noise:.1e})")
print(f"scale after 3 windows (growth_interval=1, from 65536): accumulated {runs[4, False][1]:.0f}, "
      f"unaccumulated {runs[16, False][1]:.0f}")

# %%
# NBVAL_CHECK_OUTPUT
print("fp32 with GradScaler: accumulated == unaccumulated within 1e-5:", fp32_diff <= 1e-5)
print("bf16: the accumulation difference is within bf16's own rounding noise:", bf16_diff <= 2 * bf16_noise)
print("one scaler update per window (3 doublings):", runs[4, False][1] == runs[16, False][1] == 65536 * 2**3)
try:                                    # the classic mistake: update the scale after every micro-batch
    bad = torch.amp.GradScaler("cpu")
    x, y = micro_batches[0]
    bad.scale(language_model_loss(copy.deepcopy(model)(x), y) / 4).backward()
    bad.update()
except AssertionError as error:
    print("scaler.update() mid-window -> AssertionError:", error)
# ... but step() and update() after every micro-batch raise nothing: they silently turn accumulation off.
silent, silent_scaler = copy.deepcopy(model), torch.amp.GradScaler("cpu")
silent_opt = torch.optim.SGD(silent.parameters(), lr=0.1)
steps_taken = 0
for x, y in micro_batches:
    silent_scaler.scale(language_model_loss(silent(x), y) / len(micro_batches)).backward()
    steps_taken += silent_scaler.step(silent_opt) is None   # GradScaler returns optimizer.step()'s None
    silent_scaler.update()
    silent_opt.zero_grad()
print(f"scaler.step() + update() after every micro-batch -> no error; optimizer steps in one window: {steps_taken} "
      f"(instead of 1)")

# %% [markdown]
# **A learning-rate schedule counts optimizer steps.** A warm-up over 8 steps, stepped once per window,
# reaches the full learning rate at optimizer step 8. Stepped after every micro-batch (k = 4) it finishes
# warming up after 2 real steps, and a cosine decay would end 4x early.

# %%
def lr_trace(per_micro_batch, k=4, windows=10):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 8))
    trace = []
    for _ in range(windows):
        trace.append(opt.param_groups[0]["lr"])           # the lr this optimizer step uses
        opt.step()
        for _ in range(k if per_micro_batch else 1):
            sched.step()
    return trace


fig, ax = plt.subplots(figsize=(6.5, 2.6))
ax.plot(lr_trace(False), "o-", label="scheduler.step() once per window (right)")
ax.plot(lr_trace(True), "s--", label="scheduler.step() per micro-batch, k = 4")
ax.set(xlabel="optimizer step", ylabel="learning rate", title="Warm-up over 8 steps")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **On a GPU: fp16 and a real loss scale.** bf16 has fp32's range and needs no scaling; fp16 does, and
# fp16 matmuls on a CPU are tens of times slower than fp32 (REFERENCE.md). The same check with fp16
# autocast and `GradScaler("cuda")` runs only where CUDA is present:

# %%
if device.type == "cuda":
    def run_fp16(micro_batch):
        trial = copy.deepcopy(model)
        optimizer = torch.optim.SGD(trial.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda")
        for step in range(3):
            window16 = [(x.to(device), y.to(device)) for x, y in split_batch(get_batch(100 + step), micro_batch)]
            accumulation_step(trial, optimizer, window16, scaler=scaler, max_grad_norm=1.0,
                              autocast_dtype=torch.float16)
        return torch.cat([p.detach().flatten().float() for p in trial.parameters()])

    print(f"fp16 on CUDA: accumulated vs unaccumulated max |diff| = {(run_fp16(4) - run_fp16(16)).abs().max():.1e}")
else:
    print("skipped: the fp16 + GradScaler('cuda') demo needs a CUDA GPU (this machine has none). "
          "On CPU we used bf16 autocast with GradScaler('cpu') above.")

# %% [markdown]
# ## 8. A stream: when the token count comes last
#
# The fix of section 4 counts the window's labelled tokens **before** the first forward, so it must hold the
# whole window (at least its labels) first. Sometimes it cannot: the micro-batches come from a stream that
# packs or tokenizes on the fly, or a pipeline that must not keep k micro-batches around, and each may be read
# only after the previous one's backward. The count is then known only after the last backward, when every
# micro-batch's gradient is already in `.grad`.
#
# ### Exercise 4.3: accumulation over a stream
#
# Write `streaming_accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None,
# scheduler=None, autocast_dtype=None)`: `micro_batches` is an iterator you read one micro-batch at a time,
# the next only after the previous one's backward. The step's gradient must still be the token-mean gradient of
# the whole window, under every option; return the window's token-mean loss; an empty stream or one with no
# labelled position is a `ValueError`, with no step taken and no gradient left. The notebook does not show an
# answer. Think about what `backward()` computes and what it is linear in, and about where the options of
# section 5 have to see the right gradient. The grader watches the stream (reading ahead is seen) and compares
# every pair of options with the library's step.

# %%
check("accumulation", exercise="4.3")

# %% [markdown]
# The library's version (`accumulation.streaming_accumulation_step`, on the course's one step) on the padded
# window of section 4, fed by a generator that notes how many backward passes had run when each micro-batch was
# read:

# %%
from efftrain_lib.accumulation import streaming_accumulation_step  # noqa: E402

streamed, backward_passes, read_at = copy.deepcopy(model), [], []
streamed.embed_tokens.weight.register_hook(lambda grad: backward_passes.append(1))


def stream_of(micro_batches):
    for pair in micro_batches:
        read_at.append(len(backward_passes))  # backward passes done when this micro-batch is read
        yield pair


stream_recorder = RecordingSGD(streamed, lr=0.0)
stream_loss = streaming_accumulation_step(streamed, stream_recorder, stream_of(window))
stream_diff = cmp("library, read as a stream", stream_recorder.applied[0], reference)
print(f"backward passes done when each micro-batch was read: {read_at}; returned loss {stream_loss:.4f} "
      f"(the window's token mean: {true_loss:.4f})")

# %%
# NBVAL_CHECK_OUTPUT
print("a stream, read one micro-batch at a time, gives the big batch's gradient within 1e-6:", stream_diff <= 1e-6)
print("each micro-batch read only after the previous one's backward:", read_at == list(range(len(window))))

# %% [markdown]
# ## 9. BatchNorm is not equivalent, LayerNorm is
#
# Accumulation is exact when each example's loss depends on that example alone. **BatchNorm** normalizes
# with the mean and variance of the batch it sees: a micro-batch of 4 has other statistics than the batch
# of 16, so the forward pass itself differs, and so do the gradients and the running statistics.
# **LayerNorm** (and our transformer's RMSNorm) normalizes each example over its own features: no
# coupling across the batch. Run both:

# %%
def norm_model(norm):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), norm(32), nn.ReLU(), nn.Linear(32, 5))


g = torch.Generator().manual_seed(0)
features, classes = torch.randn(16, 8, generator=g) * 2 + 1, torch.randint(0, 5, (16,), generator=g)
norm_diffs = {}
for norm in (nn.LayerNorm, nn.BatchNorm1d):
    big, acc = norm_model(norm), norm_model(norm)
    F.cross_entropy(big(features), classes).backward()
    acc.zero_grad()
    for x, y in zip(features.chunk(4), classes.chunk(4)):
        (F.cross_entropy(acc(x), y) / 4).backward()
    norm_diffs[norm.__name__] = cmp(f"{norm.__name__}: 4 x 4 vs 16", gradients(acc), gradients(big))
    if norm is nn.BatchNorm1d:
        running = (acc[1].running_var - big[1].running_var).abs().max().item()
        print(f"{'':38} running_var after one window: max |diff| {running:.2e} (updated 4 times, not once)")

# %%
# NBVAL_CHECK_OUTPUT
print("LayerNorm: accumulated == big batch within 1e-6:", norm_diffs["LayerNorm"] <= 1e-6)
print("BatchNorm: accumulated == big batch within 1e-6:", norm_diffs["BatchNorm1d"] <= 1e-6)

# %% [markdown]
# Remedies when a model has BatchNorm: a micro-batch large enough for stable statistics, GroupNorm or
# LayerNorm instead, or SyncBatchNorm across devices (it syncs across GPUs, not across micro-batches).
#
# ## 10. Memory and time
#
# Fix the effective batch at 32 sequences of 64 characters and cut it into micro-batches of 32, 16, ...,
# 1 (k = 1 ... 32). For each: peak memory of one window (the course's meter: on CPU exact accounting of
# weights, gradients, AdamW state and tensors saved for backward; on a GPU the CUDA allocator) and the
# median wall time of one window.

# %%
from efftrain_lib import accumulation_explorer
from efftrain_lib.accumulation_explorer import profile_accumulation

effective = get_batch(200)
effective = (torch.cat([effective[0], get_batch(201)[0]]), torch.cat([effective[1], get_batch(201)[1]]))  # 32 x 64
profiles = profile_accumulation(model, effective, [32, 16, 8, 4, 2, 1], repeats=5)
rows = accumulation_explorer.tradeoff_rows(profiles)
table = ["| micro-batch b | k | peak memory | of which activations | time per effective batch | memory vs k=1 | time vs k=1 |",
         "|---|---|---|---|---|---|---|"]
for r in rows:
    table.append(f"| {r['micro_batch']} | {r['accumulation_steps']} | {r['peak_mib']:.2f} MiB | {r['activations_mib']:.2f} MiB "
                 f"| {r['ms_per_effective_batch']:.0f} ms | {r['memory_vs_baseline']:.2f}x | {r['time_vs_baseline']:.2f}x |")
display(Markdown("\n".join(table) + f"\n\nMemory source: {profiles[0].peak.source}."))
fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), layout="constrained")
accumulation_explorer.draw_tradeoff(axes, profiles, micro_batch_size=4)
plt.show()

# %% [markdown]
# Activations shrink with the micro-batch; weights, gradients and AdamW state do not move. So accumulation
# rescues you when **activations** are the problem, never when the model and its optimizer state alone do
# not fit (that is the job of LoRA, a 16- or 4-bit frozen base, 8-bit optimizer state or sharding; mixed
# precision keeps the fp32 model states, chapter 0). Time per effective batch grows as micro-batches get
# small: each one pays the per-step overhead (Python, kernel launches) and uses the hardware less well.
#
# **Play with it.** The slider trades micro-batch size against accumulation steps at this fixed effective
# batch (open the notebook in JupyterLab to move it). The second picture carries the trade-off to a
# LLaMA-7B shape with Korthikanti et al.'s activation estimate.

# %%
accumulation_explorer.tradeoff_explorer(profiles)

# %%
fig, ax = plt.subplots(figsize=(6, 3))
accumulation_explorer.draw_7b_estimate(ax, effective_batch=64, micro_batch=4)
plt.show()
print(f"LLaMA-7B shape, seq 2048: activations {accumulation_explorer.activation_gb_7b(64):.0f} GB for a batch of 64, "
      f"{accumulation_explorer.activation_gb_7b(4):.0f} GB per micro-batch of 4 (k = 16), "
      f"{accumulation_explorer.activation_gb_7b(1):.0f} GB at b = 1 (k = 64)")

# %% [markdown]
# **Live: the big batch against accumulation, on one axis.** Six optimizer steps each, the same data: one
# batch of 32 per step, and 8 micro-batches of 4 per step. The left panel is memory within the last step:
# one tall hill for the big batch, eight low hills (forward builds up, backward releases) for the
# accumulated step. The right panel is the peak of every step.

# %%
from efftrain_lib.liveplot import LiveMemoryPlot
from efftrain_lib.meter import MemoryMeter

live = LiveMemoryPlot(title="Memory within a step: one batch of 32 vs 8 micro-batches of 4")
finetuned = {}
for label, micro_batch in [("big batch (b=32, k=1)", 32), ("accumulated (b=4, k=8)", 4)]:
    seed_everything(0)
    trial = load_pretrained().to(device)
    optimizer = torch.optim.AdamW(trial.parameters(), lr=1e-3)
    accumulator = GradientAccumulator(trial, optimizer, accumulation_steps=32 // micro_batch)
    stream = [pair for step in range(6) for pair in split_batch(
        (torch.cat([get_batch(300 + 2 * step)[0], get_batch(301 + 2 * step)[0]]),
         torch.cat([get_batch(300 + 2 * step)[1], get_batch(301 + 2 * step)[1]])), micro_batch)]
    meter = MemoryMeter()
    losses = accumulator.train(stream, meter=meter, on_step=live.attach(meter, label), progress=True, desc=label)
    finetuned[label] = dict(model=trial, losses=losses, meter=meter)
live.finish()

# %%
big, accumulated = finetuned.values()
params_diff = max((p - q).abs().max().item() for p, q in zip(big["model"].parameters(), accumulated["model"].parameters()))
print("losses per step, big batch:  ", " ".join(f"{v:.4f}" for v in big["losses"]))
print("losses per step, accumulated:", " ".join(f"{v:.4f}" for v in accumulated["losses"]))
print(f"parameters after 6 AdamW steps: max |diff| {params_diff:.1e}")
print(f"peak per step: {big['meter'].last.peak.total / 2**20:.2f} MiB vs {accumulated['meter'].last.peak.total / 2**20:.2f} MiB "
      f"(activations {big['meter'].last.peak.activations / 2**20:.2f} vs {accumulated['meter'].last.peak.activations / 2**20:.2f} MiB)")

# %%
# NBVAL_CHECK_OUTPUT
print("six steps of the big batch and of 8 x 4 micro-batches land on the same weights (within 1e-4):",
      params_diff <= 1e-4)

# %% [markdown]
# AdamW divides by the root of its second moment, which magnifies rounding in tiny gradient entries: after
# six steps the weights agree to the 1e-6 level here rather than 1e-8, still far below one step's size (lr 1e-3).
#
# ## 11. Myths vs measurement
#
# The seed's accumulation claims next to what this notebook measured.

# %%
by_micro = {r["micro_batch"]: r for r in rows}
# The other baseline for "slower": the same micro-batches of 4 without accumulation (8 optimizer steps).
trial = copy.deepcopy(model)
optimizer = torch.optim.AdamW(trial.parameters(), lr=1e-3)
stream = split_batch(effective, 4)
accumulation_step(trial, optimizer, stream)                        # warm-up, creates AdamW's state
timings = {"accumulated": [], "unaccumulated": []}
for round_ in tqdm(range(5), desc="timing rounds", leave=False):
    for name in (["accumulated", "unaccumulated"] if round_ % 2 == 0 else ["unaccumulated", "accumulated"]):
        start = time.perf_counter()
        if name == "accumulated":
            accumulation_step(trial, optimizer, stream)            # 1 optimizer step
        else:
            for pair in stream:
                accumulation_step(trial, optimizer, [pair])        # 8 optimizer steps
        timings[name].append(time.perf_counter() - start)
same_micro_ratio = sorted(timings["accumulated"])[2] / sorted(timings["unaccumulated"])[2]
myths = [
    ("等效 batch size = mini_batch_size × accumulation_steps (an equivalent batch)",
     f"For the gradient, exactly, **if** each window is normalized by its own token count: max |diff| "
     f"{equivalence_diff:.0e} (section 2), {fixed_diff:.0e} with unequal token counts (section 5), "
     f"{stream_diff:.0e} counted as they come (section 8). Not with "
     f"the mean of micro-batch means ({naive_diff:.0e}), not for the seed's leftover window "
     f"({seed_factors[-1]:.2f} of a step), not with BatchNorm ({norm_diffs['BatchNorm1d']:.0e})."),
    ("loss / accumulation_steps keeps the gradient magnitude right (保证梯度量级正确)",
     "Only for full windows of equal token counts. Divide by the window's labelled-token count instead."),
    ("训练变慢 (training gets slower)",
     f"Per effective batch of 32 on this machine: k=8 takes {by_micro[4]['time_vs_baseline']:.2f}x and k=32 "
     f"{by_micro[1]['time_vs_baseline']:.2f}x the time of one batch of 32 "
     + ("(slower, as small micro-batches use the hardware less well). " if by_micro[1]["time_vs_baseline"] > 1.05
        else "(no slower here: a tiny model on a CPU is not starved by small batches). ")
     + f"But pick the right baseline: the same 32 sequences as 8 unaccumulated steps of 4 took "
     f"{1 / same_micro_ratio:.2f}x the accumulated time (8 optimizer steps instead of 1); against a big batch that "
     "does not fit, accumulation is the one that runs at all."),
    ("batch 太小 → Gradient Accumulation (use it when the batch is too small)",
     f"It shrinks activations only: peak {by_micro[32]['peak_mib']:.2f} → {by_micro[4]['peak_mib']:.2f} MiB at "
     f"k=8, of which activations {by_micro[32]['activations_mib']:.2f} → {by_micro[4]['activations_mib']:.2f} MiB. "
     "Weights, gradients and optimizer state stay whole: accumulation never makes a too-large model fit."),
]
display(Markdown("| claim (seed) | measured here |\n|---|---|\n" + "\n".join(f"| {c} | {m} |" for c, m in myths)))

# %% [markdown]
# ## 12. Exercises, all at once
#
# The chapter's exercises, where they come up: 4.1 `accumulation_step` and 4.2 `GradientAccumulator`
# (section 5), 4.3 `streaming_accumulation_step` (section 8; the notebook never shows an answer to this one).
# All of them at once (also in a terminal: `python -m efftrain_lib.grade accumulation`). The reference answers
# (`solutions/accumulation.py`) pass every check; peek only after trying:

# %%
check("accumulation")

# %%
check("accumulation", impl="solutions")

# %% [markdown]
# ## 13. Interview drill
#
# The chapter's cards: the seed's questions and more. Reveal, grade yourself; numeric answers are checked.
# Missed cards come back first next time (also in a terminal: `python -m efftrain_lib.drill --chapter accumulation`).

# %%
from efftrain_lib.drill import quiz

quiz("accumulation")

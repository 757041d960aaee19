"""Generated numeric questions for the mock interview: parameters drawn at random, answers computed by the
course's own library when the question is asked, so the bank cannot be memorised.

    gen = GENERATORS["gen-zero-model-states"]
    params = gen.draw(random.Random(0))     # {"billions": 13, "stage": 2, "devices": 8, ...}
    card = gen.card(params)                 # a Card: question text, the library's answer, its tolerance

Each generator draws its parameters (`draw`), then builds a Card (`card`) whose numeric_answer the library
computes (the estimator's formulas, lora_math, sharding_math, quant_math, collectives, number_formats, the
loss scaler itself, losses.summed_loss) and whose wrong answers are the classic mistakes at those
parameters; the drill's number parser and the card's relative tolerance check the learner's number.
tests/test_drill_mock.py recomputes every generator's answer by an independent route over many draws.
This module imports torch (through the library); the drill's command line loads it only for --mock.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch

from efftrain_lib.checkpointing import sequential_split
from efftrain_lib.collectives import ring_all_reduce_bytes
from efftrain_lib.drill.bank import Card
from efftrain_lib.lora_math import scaling
from efftrain_lib.losses import count_labelled, summed_loss
from efftrain_lib.memory import TransformerShape, activation_bytes, bytes_per_parameter, lora_trainable_params
from efftrain_lib.memory_advisor import time_factor
from efftrain_lib.number_formats import round_through
from efftrain_lib.precision import LossScaler
from efftrain_lib.quant_math import bits_per_parameter, optimizer_state_bytes
from efftrain_lib.sharding_math import zero_bytes_per_parameter

__all__ = ["GENERATORS", "Generator"]

GB, GIB, MB, MIB = 1e9, 2**30, 1e6, 2**20


@dataclass(frozen=True)
class Generator:
    """A question template: `draw(rng)` picks its parameters, `make(params)` returns (question, answer
    text, value, {wrong method: value}) computed by the library."""

    id: str  # progress is kept under it, as a card's
    chapter: str
    difficulty: int
    unit: str | None
    tolerance: float
    section: str
    library: str  # what computes the answer, shown with it
    draw: Callable[[random.Random], dict]
    make: Callable[[dict], tuple[str, str, float, dict]]

    def card(self, params: dict) -> Card:
        question, answer, value, wrong = self.make(params)
        distinct: list[tuple[str, float]] = []  # at these parameters a mistake may give the answer, or another's number
        for why, v in wrong.items():
            if not any(math.isclose(v, seen, rel_tol=1e-9) for seen in [value, *(w for _, w in distinct)]):
                distinct.append((why, float(v)))
        return Card(id=self.id, chapter=self.chapter, difficulty=self.difficulty, question=question, answer=answer,
                    numeric_answer=float(value), tolerance=self.tolerance, unit=self.unit, section=self.section,
                    how=f"generated; computed now by {self.library}", wrong_answers=tuple(distinct))

    def ask(self, rng: random.Random) -> Card:
        return self.card(self.draw(rng))


GENERATORS: dict[str, Generator] = {}


def generator(id: str, chapter: str, difficulty: int, unit: str | None, tolerance: float, section: str, library: str,
              draw: Callable[[random.Random], dict]):
    """Register the decorated make(params) as a generator."""
    def register(make):
        GENERATORS[id] = Generator(id, chapter, difficulty, unit, tolerance, section, library, draw, make)
        return make
    return register


def gib_typed_as_gb(gb: float) -> float:
    return gb * GB / GIB


# ------------------------------------------------------------------------------------------------
# Chapter 0: memory anatomy
# ------------------------------------------------------------------------------------------------

POLICIES = {  # precision policy -> how the question says it
    "fp32": "fp32 weights and optimizer",
    "bf16_autocast": "fp32 weights under bf16 autocast (count the model states only)",
    "bf16": "pure bf16 weights, gradients and optimizer state",
    "fp16_master": "fp16 weights and gradients with an fp32 master copy and fp32 optimizer state",
}
OPTIMIZER_NAMES = {"adam": "Adam", "sgd_momentum": "SGD with momentum", "sgd": "plain SGD"}


@generator("gen-model-states", "memory_math", 1, "GB", 0.02, "00_memory_anatomy.ipynb § 3. 16 or 18 bytes per parameter?",
           "memory.bytes_per_parameter", lambda rng: dict(billions=rng.choice([1.3, 3, 7, 8, 13, 34, 70]),
                                                          precision=rng.choice(list(POLICIES)),
                                                          optimizer=rng.choice(list(OPTIMIZER_NAMES))))
def _model_states(p):
    per = bytes_per_parameter(p["precision"], p["optimizer"])
    per_param = per["weights"] + per["gradients"] + per["optimizer_state"]
    gb = p["billions"] * 1e9 * per_param / GB
    q = (f"A {p['billions']:g}B-parameter model, {POLICIES[p['precision']]}, {OPTIMIZER_NAMES[p['optimizer']]}: "
         "how many GB of model states (weights + gradients + optimizer state)?")
    a = (f"{per['weights']:g} + {per['gradients']:g} + {per['optimizer_state']:g} = {per_param:g} bytes per parameter "
         f"x {p['billions']:g}e9 = {gb:,.1f} GB.")
    fp32 = bytes_per_parameter("fp32", p["optimizer"])
    return q, a, gb, {"GiB typed as GB": gib_typed_as_gb(gb),
                      "fp32 bytes for every term": p["billions"] * (fp32["total"] - fp32["cast_weights"]),
                      "the optimizer state forgotten": p["billions"] * (per["weights"] + per["gradients"])}


SHAPES = [(2048, 16, 24), (4096, 32, 32), (5120, 40, 40), (8192, 64, 80)]  # hidden, heads, layers
RECOMPUTE_WORDS = {"none": "no recomputation", "selective": "selective recomputation (attention's core)",
                   "full": "full recomputation (each layer's input kept)"}


@generator("gen-activations", "memory_math", 2, "GB", 0.02, "02_gradient_checkpointing.ipynb § 1. Why activations dominate",
           "memory.activation_bytes (Korthikanti et al. 2022)",
           lambda rng: dict(shape=rng.choice(SHAPES), seq=rng.choice([512, 1024, 2048, 4096]), batch=rng.choice([1, 2, 4, 8]),
                            recompute=rng.choice(list(RECOMPUTE_WORDS))))
def _activations(p):
    (h, a, n), s, b = p["shape"], p["seq"], p["batch"]
    gb = activation_bytes(s, b, h, a, n, p["recompute"]) / GB
    q = (f"Korthikanti et al.'s activation memory (16-bit, per layer sbh(34 + 5as/h), 34sbh with selective and 2sbh "
         f"with full recomputation): s = {s}, b = {b}, h = {h}, a = {a} heads, {n} layers, {RECOMPUTE_WORDS[p['recompute']]}. GB?")
    return q, f"{gb:,.2f} GB (memory.activation_bytes).", gb, {
        "GiB typed as GB": gib_typed_as_gb(gb), "one layer": gb / n,
        "without recomputation": activation_bytes(s, b, h, a, n) / GB}


# ------------------------------------------------------------------------------------------------
# Chapter 1: LoRA
# ------------------------------------------------------------------------------------------------

TARGET_SETS = [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"),
               ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), ("gate_proj", "up_proj", "down_proj")]
MODEL_SHAPES = [(24, 2048, 5632), (32, 4096, 11008), (40, 5120, 13824), (48, 6144, 16384)]  # layers, hidden, MLP width


@generator("gen-lora-params", "lora", 2, "params", 0.01, "01_lora.ipynb § 1. The problem: full fine-tuning a 7B model",
           "memory.lora_trainable_params over memory.TransformerShape.linear_shapes",
           lambda rng: dict(shape=rng.choice(MODEL_SHAPES), rank=rng.choice([4, 8, 16, 32, 64]), targets=rng.choice(TARGET_SETS)))
def _lora_params(p):
    layers, hidden, ffn = p["shape"]
    shapes = TransformerShape(32000, hidden, layers, 32, ffn, 4096).linear_shapes()
    n = lora_trainable_params([shapes[t] for t in p["targets"]] * layers, p["rank"])
    q = (f"LoRA r = {p['rank']} on {', '.join(p['targets'])} of a {layers}-layer model with hidden size {hidden} and MLP "
         f"width {ffn} (no grouped-query attention): how many trainable parameters?")
    square = layers * len(p["targets"]) * 2 * hidden * p["rank"]
    return q, f"sum over the adapted matrices of (out + in) x r, x {layers} layers = {n:,}.", n, {
        "every matrix taken as hidden x hidden": square, "one layer only": n / layers, "only A (r x in) counted":
        layers * p["rank"] * sum(shapes[t][1] for t in p["targets"])}


@generator("gen-lora-scaling", "lora", 1, None, 0.01, "01_lora.ipynb § 9. Variants: rsLoRA and DoRA",
           "lora_math.scaling", lambda rng: dict(alpha=rng.choice([8, 16, 32, 64]), rank=rng.choice([4, 8, 16, 32, 64, 128]),
                                                 rslora=rng.random() < 0.5))
def _lora_scaling(p):
    value = scaling(p["alpha"], p["rank"], rslora=p["rslora"])
    kind = "rsLoRA (use_rslora=True)" if p["rslora"] else "standard LoRA"
    other = scaling(p["alpha"], p["rank"], rslora=not p["rslora"])
    q = f"{kind}, lora_alpha = {p['alpha']}, r = {p['rank']}: what factor multiplies B A x?"
    formula = "alpha / sqrt(r)" if p["rslora"] else "alpha / r"
    return q, f"{formula} = {value:g}.", value, {"the other rule (alpha / r vs alpha / sqrt(r))": other,
                                                  "alpha alone": p["alpha"]}


# ------------------------------------------------------------------------------------------------
# Chapter 2: gradient checkpointing
# ------------------------------------------------------------------------------------------------

def _draw_split(rng):
    n = rng.randint(6, 40)
    return dict(functions=n, segments=rng.randint(2, min(8, n)))


@generator("gen-ckpt-sequential", "checkpointing", 2, "functions", 0.0, "02_gradient_checkpointing.ipynb § 5. The sqrt(n) plan",
           "checkpointing.sequential_split (torch's checkpoint_sequential split)", _draw_split)
def _ckpt_sequential(p):
    start, stop = sequential_split(p["functions"], p["segments"])[-1]
    q = (f"checkpoint_sequential(functions, segments={p['segments']}, input) over {p['functions']} functions: how many "
         "functions run in the last chunk, which is not checkpointed?")
    a = (f"{p['segments'] - 1} chunks of {p['functions']} // {p['segments']} = {p['functions'] // p['segments']}; the last "
         f"chunk takes the rest: {stop - start}.")
    return q, a, stop - start, {"an even split, rounded": round(p["functions"] / p["segments"]), "none": 0}


@generator("gen-mfu", "checkpointing", 3, "%", 0.02, '00_memory_anatomy.ipynb § 10. "My memory is not enough: which technique?"',
           "memory_advisor.time_factor's FLOP count (6PD; LoRA 4PD; +2PD recompute)",
           lambda rng: dict(hfu=rng.choice([30, 40, 45, 50, 55, 60]), lora=rng.random() < 0.5))
def _mfu(p):
    model, hardware = time_factor(False, p["lora"], False), time_factor(True, p["lora"], False)
    mfu = p["hfu"] * model / hardware
    what = "LoRA (frozen weights: no weight gradients)" if p["lora"] else "full fine-tuning"
    q = (f"{what} with full activation recomputation reports {p['hfu']}% hardware FLOPs utilization (HFU, the "
         "recomputed forward counted). Its model FLOPs utilization (MFU), in %?")
    return q, f"MFU = HFU x model FLOPs / executed FLOPs = {p['hfu']} x {model * 6:g}PD / {hardware * 6:g}PD = {mfu:.1f}%.", mfu, {
        "MFU = HFU": p["hfu"], "the other step's FLOPs (6PD vs 4PD)": p["hfu"] * time_factor(False, not p["lora"], False)
        / time_factor(True, not p["lora"], False)}


# ------------------------------------------------------------------------------------------------
# Chapter 3: mixed precision
# ------------------------------------------------------------------------------------------------

def _draw_overflows(rng):
    steps = [rng.random() < 0.3 for _ in range(rng.randint(5, 8))]  # True: this step's gradients overflow
    return dict(init_exp=rng.choice([10, 12, 16]), interval=rng.choice([2, 3]), overflows=steps)


def _scaler_after(init_scale: float, interval: int, overflows: list[bool]) -> float:
    """Run the course's LossScaler through the steps: an inf gradient where a step overflows."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    scaler = LossScaler("cpu", init_scale=init_scale, growth_interval=interval)
    for overflow in overflows:
        weight.grad = torch.full((1,), math.inf if overflow else 1.0)
        scaler.step(optimizer)
        scaler.update()
    return scaler.get_scale()


@generator("gen-loss-scale", "loss_scaling", 2, None, 0.0, "03_mixed_precision.ipynb § 5. Build a loss scaler step by step",
           "precision.LossScaler (torch.amp.GradScaler's rules), run through the steps", _draw_overflows)
def _loss_scale(p):
    init, steps = 2.0 ** p["init_exp"], "".join("X" if o else "." for o in p["overflows"])
    value = _scaler_after(init, p["interval"], p["overflows"])
    q = (f"A dynamic loss scaler starts at 2^{p['init_exp']} = {init:g}, growth_factor 2, backoff_factor 0.5, "
         f"growth_interval {p['interval']}. Steps, in order ('.' finite, 'X' an overflow): {steps}. The scale after them?")
    a = (f"{value:g} (2^{math.log2(value):g}): an overflow halves the scale and resets the count; {p['interval']} "
         "consecutive finite steps double it.")
    grows_on_total = init * 2.0 ** (sum(not o for o in p["overflows"]) // p["interval"] - sum(p["overflows"]))
    return q, a, value, {"growth counted over all finite steps (the seed's bug)": grows_on_total, "the initial scale": init}


@generator("gen-fp16-integer", "loss_scaling", 2, None, 0.0, "03_mixed_precision.ipynb § 1. Number formats: fp32, fp16, bf16",
           "number_formats.round_through(n, 'fp16')", lambda rng: dict(n=rng.randrange(2049, 65504, 2)))  # odd: never exact
def _fp16_integer(p):
    n = p["n"]
    stored = round_through(float(n), "fp16")
    step = 2.0 ** (math.floor(math.log2(n)) - 10)
    q = f"What does fp16 store for the integer {n}?"
    a = (f"{stored:g}: between 2^{math.floor(math.log2(n))} and 2^{math.floor(math.log2(n)) + 1} fp16 values are {step:g} "
         "apart (10 mantissa bits); round to nearest, ties to even.")
    return q, a, stored, {"the integer itself (exact)": n, "truncated instead of rounded": math.floor(n / step) * step}


# ------------------------------------------------------------------------------------------------
# Chapter 4: gradient accumulation
# ------------------------------------------------------------------------------------------------

def _draw_window(rng):
    """Micro-batches of different lengths whose mean of means is at least 3% off the token mean (the
    question is about that difference; a near tie would not tell the two methods apart)."""
    while True:
        micro = [[round(rng.uniform(0.5, 3.0), 1) for _ in range(rng.randint(1, 5))] for _ in range(rng.randint(2, 3))]
        tokens = [x for m in micro for x in m]
        token_mean, mean_of_means = sum(tokens) / len(tokens), sum(sum(m) / len(m) for m in micro) / len(micro)
        if abs(mean_of_means - token_mean) > 0.03 * token_mean:
            return dict(micro=micro)


def _window_loss(micro: list[list[float]]) -> float:
    """losses.summed_loss of each micro-batch (padded with -100) over the window's labelled count: logits
    [0, log(e^l - 1)] with label 0 give exactly loss l per token."""
    width = max(len(m) for m in micro)
    total, count = 0.0, 0
    for losses in micro:
        target = torch.tensor(losses + [1.0] * (width - len(losses)), dtype=torch.float64)
        logits = torch.stack([torch.zeros_like(target), torch.log(torch.expm1(target))], dim=-1)
        labels = torch.tensor([0] * len(losses) + [-100] * (width - len(losses)))
        total += summed_loss(logits, labels).item()
        count += count_labelled(labels)
    return total / count


@generator("gen-token-mean", "accumulation", 2, None, 0.01,
           "04_gradient_accumulation.ipynb § 4. Variable-length sequences: the 2024 loss-normalization bug",
           "losses.summed_loss / losses.count_labelled over the window", _draw_window)
def _token_mean(p):
    value = _window_loss(p["micro"])
    listed = "; ".join(f"micro-batch {i + 1}: {', '.join(f'{x:g}' for x in m)}" for i, m in enumerate(p["micro"]))
    q = (f"One accumulation window of a causal LM; the per-token losses of its labelled tokens are {listed}. "
         "What loss does the window's optimizer step minimise (the big batch's)?")
    means = [sum(m) / len(m) for m in p["micro"]]
    return q, f"The token mean over the whole window: {value:.4g} (not the mean of micro-batch means).", value, {
        "the mean of micro-batch means": sum(means) / len(means)}


# ------------------------------------------------------------------------------------------------
# Chapter 5: distributed
# ------------------------------------------------------------------------------------------------

ZERO_POLICIES = {"mixed": ("the ZeRO paper's mixed-precision Adam (2 + 2 + 12 bytes per parameter)", dict()),
                 "fp32": ("fp32 Adam (4 + 4 + 8 bytes per parameter)", dict(weight_bytes=4, grad_bytes=4, optimizer_bytes=8))}


@generator("gen-zero-model-states", "distributed", 2, "GB", 0.02,
           "05_distributed.ipynb § 7. Memory per rank: 1, 2 and 4 ranks against the formulas", "sharding_math.zero_bytes_per_parameter",
           lambda rng: dict(billions=rng.choice([7, 13, 34, 70]), stage=rng.randint(0, 3), devices=rng.choice([4, 8, 16, 64]),
                            policy=rng.choice(list(ZERO_POLICIES))))
def _zero_states(p):
    words, kw = ZERO_POLICIES[p["policy"]]
    per = zero_bytes_per_parameter(p["stage"], p["devices"], **kw)
    gb = p["billions"] * per
    q = (f"{p['billions']}B parameters, {words}, ZeRO stage {p['stage']} over {p['devices']} GPUs: GB of model states "
         "per GPU?")
    return q, f"{per:g} bytes per parameter on each GPU x {p['billions']}e9 = {gb:,.2f} GB.", gb, {
        "GiB typed as GB": gib_typed_as_gb(gb), "unsharded": p["billions"] * zero_bytes_per_parameter(0, 1, **kw),
        "everything sharded (stage 3)": p["billions"] * zero_bytes_per_parameter(3, p["devices"], **kw)}


@generator("gen-ring-allreduce", "distributed", 1, "MB", 0.01, "05_distributed.ipynb § 1. Data parallelism, and the ring all-reduce",
           "collectives.ring_all_reduce_bytes", lambda rng: dict(mb=rng.choice([25, 100, 250, 500, 1000]),
                                                                 ranks=rng.choice([2, 4, 8, 16, 64])))
def _ring(p):
    mb = ring_all_reduce_bytes(p["mb"] * MB, p["ranks"]) / MB
    q = f"A ring all-reduce of {p['mb']} MB of gradients over {p['ranks']} ranks: how many MB does each rank send?"
    return q, f"2(N - 1)/N x {p['mb']} MB = {mb:g} MB (a reduce-scatter, then an all-gather).", mb, {
        "a reduce-scatter alone, (N - 1)/N": mb / 2, "twice the buffer": 2 * p["mb"]}


# ------------------------------------------------------------------------------------------------
# Chapter 6: QLoRA
# ------------------------------------------------------------------------------------------------

BASE_FORMATS = {"int8": (8, None, "int8 with one fp32 absmax per block"), "nf4": (4, None, "NF4 with one fp32 absmax per block"),
                "nf4_dq": (4, 256, "NF4 with double-quantized scales (int8, one fp32 factor per 256 scales)")}


@generator("gen-quantized-base", "qlora", 2, "GB", 0.005, "06_qlora.ipynb § 4. Double quantization", "quant_math.bits_per_parameter",
           lambda rng: dict(billions=rng.choice([7, 13, 33, 65, 70]), fmt=rng.choice(list(BASE_FORMATS)),
                            block=rng.choice([32, 64, 128])))
def _quantized_base(p):
    bits, group, words = BASE_FORMATS[p["fmt"]]
    per = bits_per_parameter(bits, p["block"], double_quant_block=group)
    gb = p["billions"] * 1e9 * per / 8 / GB
    q = f"{p['billions']}B base weights stored as {words}, blocks of {p['block']}: how many GB?"
    return q, f"{per:.4g} bits per parameter x {p['billions']}e9 / 8 = {gb:,.2f} GB.", gb, {
        "the codes alone": p["billions"] * bits / 8, "GiB typed as GB": gib_typed_as_gb(gb),
        "bits, not bytes": gb * 8}


@generator("gen-8bit-state", "qlora", 3, "bytes", 0.0, "06_qlora.ipynb § 7. What else QLoRA needs",
           "quant_math.optimizer_state_bytes(n, 2, '8bit', 4)", lambda rng: dict(n=rng.choice([1000, 2000, 4096, 5000, 65536,
                                                                                                 100000, 4096 * 1000 + 7])))
def _eight_bit_state(p):
    n = p["n"]
    nbytes = optimizer_state_bytes(n, 2, "8bit", 4)
    q = (f"8-bit AdamW (bitsandbytes' rules: m and v as one uint8 per value plus an fp32 absmax per block of 2048; "
         f"tensors under 4,096 values keep 32-bit state) on a tensor of {n:,} values: bytes of optimizer state?")
    return q, f"{nbytes:,} bytes.", nbytes, {"fp32 m and v": 8 * n, "no absmax counted": 2 * n,
                                              "the small-tensor rule forgotten": 2 * (n + 4 * math.ceil(n / 2048))}


# ------------------------------------------------------------------------------------------------
# Chapter 7: the capstone
# ------------------------------------------------------------------------------------------------

@generator("gen-plan-step-time", "capstone", 2, "x", 0.01, "07_capstone.ipynb § 2. The step time: FLOPs, plus what FLOPs do not see",
           "memory_advisor.time_factor (6PD; LoRA 4PD; +2PD per recomputed forward; / the mixed-precision speedup)",
           lambda rng: dict(lora=rng.random() < 0.5, fraction=rng.choice([0, 0.25, 0.5, 0.75, 1.0]),
                            speedup=rng.choice([None, 1.5, 2.0, 3.0])))
def _plan_step_time(p):
    mixed = p["speedup"] is not None
    speedup = p["speedup"] or 2.0
    factor = time_factor(p["fraction"], p["lora"], mixed, speedup)
    what = ["LoRA (the base frozen)" if p["lora"] else "full fine-tuning",
            f"{p['fraction']:.0%} of the layers checkpointed",
            f"mixed precision {p['speedup']:g}x faster per FLOP" if mixed else "fp32"]
    q = (f"A plan: {', '.join(what)}. By FLOPs (forward 2PD, backward 4PD of which 2PD weight gradients, a "
         "recomputed forward 2PD per checkpointed layer), what is its step time as a factor of the plain fp32 "
         "full fine-tuning step?")
    backward = 2 if p["lora"] else 4
    a = (f"(2 + {backward} + 2 x {p['fraction']:g}) / 6" + (f" / {p['speedup']:g}" if mixed else "")
         + f" = x{factor:.3f}.")
    wrong = {"the recomputation forgotten": time_factor(0.0, p["lora"], mixed, speedup),
             "LoRA's missing weight gradients not counted": time_factor(p["fraction"], False, mixed, speedup)}
    if mixed:
        wrong["the mixed-precision speedup forgotten"] = time_factor(p["fraction"], p["lora"], False)
    return q, a, factor, wrong

"""Every number the drill asks for: computed by the course's library, read from a notebook's run, or cited.

    python -m efftrain_lib.drill.figures           # are the cached figures still what the library says?
    python -m efftrain_lib.drill.figures --write   # recompute them into efftrain_lib/data/drill_figures.json

A numeric card in questions.toml types no number. Its answer is the figure registered here under the
card's id, with the classic wrong methods beside it (MB read as MiB, GiB typed as GB, tied embeddings,
fp16 bytes for fp32 ones...): the drill names the mistake when a learner's number is one of them, and
tests/test_drill_figures.py proves that the card's tolerance rejects every one of them. A figure is

    computed   by the library (the estimator efftrain_lib.memory, bytes_per_parameter, lora_math,
               number_formats, quant_math, sharding_math, optimizer_math, the advisor's FLOP count);
    measured   read from the output a notebook stored when scripts/build_notebooks.py last executed it
               (the run is named: notebook, section, what it measured);
    cited      a published figure (paper, table, specification), computed from the paper's own formula
               where it has one.

This module imports torch (through the library); the bank reads only the JSON cache, so the drill's
command line starts without it. The tests recompute every figure and fail when the cache drifts.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from efftrain_lib.collectives import ring_all_reduce_bytes
from efftrain_lib.drill.bank import FIGURES_FILE, default_bank_path
from efftrain_lib.grade import find_repo_root
from efftrain_lib.lora_math import parameter_count, scaling
from efftrain_lib.memory import (PRESETS, accelerate_estimate, activation_bytes, bytes_per_parameter,
                                 estimate_training_memory, lora_trainable_params)
from efftrain_lib.memory_advisor import devices_needed, time_factor
from efftrain_lib.number_formats import format_info
from efftrain_lib.quant_math import bits_per_parameter, optimizer_state_bytes
from efftrain_lib.sharding_math import communication_volume, zero_bytes_per_parameter

__all__ = ["FIGURES", "Figure", "compute_all", "figures_path", "main", "section_outputs", "stale"]

COMPUTED, MEASURED, CITED = "computed", "measured", "cited"
GB, GIB, MB, MIB = 1e9, 2**30, 1e6, 2**20
LLAMA7 = PRESETS["Llama-2-7B"]
QV_R8 = lora_trainable_params([LLAMA7.linear_shapes()[m] for m in ("q_proj", "v_proj")] * LLAMA7.n_layers, 8)


@dataclass(frozen=True)
class Figure:
    """One card's number: `compute()` returns (value, {classic wrong method: the value it gives})."""

    card_id: str
    kind: str  # computed | measured | cited
    how: str  # shown with the answer: where the number comes from
    compute: Callable[[], tuple[float, dict[str, float]]]

    def describe(self) -> str:
        return f"{self.kind}: {self.how}"


FIGURES: dict[str, Figure] = {}


def figure(card_id: str, kind: str, how: str):
    """Register the decorated function as the figure of card `card_id`."""
    def register(fn):
        if card_id in FIGURES:
            raise ValueError(f"figure {card_id!r} is registered twice")
        FIGURES[card_id] = Figure(card_id, kind, " ".join(how.split()), fn)
        return fn
    return register


def typed_in_other_unit(value: float, unit: float, other: float) -> float:
    """The number a learner types when they compute in `other` units but the card asks for `unit`s
    (33.55 for 32 MiB computed in MB)."""
    return value * unit / other


# ------------------------------------------------------------------------------------------------
# Chapter 1: LoRA
# ------------------------------------------------------------------------------------------------

@figure("lora-param-ratio", COMPUTED, "100 x lora_math.parameter_count(4096, 4096, 8) / (4096 x 4096)")
def _lora_param_ratio():
    share = parameter_count(4096, 4096, 8) / (4096 * 4096)
    return 100 * share, {"a fraction typed as a percentage (0.0039)": share,
                         "only A counted (r x k), not B": 100 * 4096 * 8 / 4096**2,
                         "the reduction (100% minus the share)": 100 * (1 - share)}


@figure("lora-llama7b-qv-params", COMPUTED, """memory.lora_trainable_params over q_proj and v_proj of the 32 layers
        of memory.PRESETS['Llama-2-7B'] at r = 8 (lora_math.parameter_count: (out + in) r per matrix)""")
def _lora_qv_params():
    return QV_R8, {"half of it: one of q_proj, v_proj, or one of A, B": QV_R8 / 2,
                   "one layer's adapters only": QV_R8 / LLAMA7.n_layers}


@figure("lora-llama7b-qv-fraction", COMPUTED, """100 x the q,v adapters' parameters / Llama-2-7B's parameters
        (memory.TransformerShape.num_parameters: 6,738,415,616, untied embeddings)""")
def _lora_qv_fraction():
    p, tied = LLAMA7.num_parameters(), LLAMA7.vocab_size * LLAMA7.hidden_size
    return 100 * QV_R8 / p, {"7e9 as the denominator": 100 * QV_R8 / 7e9,
                             "tied embeddings (lm_head not counted)": 100 * QV_R8 / (p - tied),
                             "a fraction typed as a percentage": QV_R8 / p}


@figure("lora-adam-state", COMPUTED, "the q,v adapters' parameters x 2 states (m, v) x 4 bytes (fp32), in MiB (2^20)")
def _lora_adam_state():
    nbytes = QV_R8 * 2 * 4
    return nbytes / MIB, {"MB (10^6 bytes) typed as MiB": typed_in_other_unit(nbytes / MIB, MIB, MB),
                          "one state, or 16-bit states": nbytes / 2 / MIB,
                          "weights, gradients and states together": 2 * nbytes / MIB}


@figure("lora-checkpoint-size", COMPUTED, "the q,v adapters' parameters x 4 bytes (fp32), in MiB (2^20)")
def _lora_checkpoint_size():
    nbytes = QV_R8 * 4
    return nbytes / MIB, {"MB (10^6 bytes) typed as MiB": typed_in_other_unit(nbytes / MIB, MIB, MB),
                          "bf16 tensors (2 bytes)": nbytes / 2 / MIB}


@figure("lora-gpt3-headlines", CITED, "Hu et al. 2021 (LoRA, arXiv 2106.09685), abstract: 10,000x fewer trainable "
        "parameters, 3x less GPU memory")
def _lora_gpt3():
    return 10_000, {"the memory reduction (3x)": 3, "1,000x": 1_000}


@figure("lora-rslora", COMPUTED, "lora_math.scaling(16, 64, rslora=True) = alpha / sqrt(r)")
def _lora_rslora():
    return scaling(16, 64, rslora=True), {"standard LoRA's alpha / r": scaling(16, 64)}


@figure("lora-qlora-nf4-weights", COMPUTED, "65e9 parameters x 4 bits / 8, in GB (10^9); 65e9 is the paper's "
        "model size (Dettmers et al. 2023)")
def _lora_nf4_weights():
    gb = 65e9 * 4 / 8 / GB
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB),
                "with fp32 block constants (4.5 bits)": 65e9 * bits_per_parameter(4, 64) / 8 / GB,
                "16-bit weights": 65e9 * 2 / GB}


@figure("lora-update-rank", COMPUTED, "rank(B A) <= min(rank B, rank A) <= min(r, out, in) (lora_math.check_rank "
        "refuses r > min(out, in))")
def _lora_update_rank():
    return min(8, 4096, 4096), {"full rank (4096)": 4096, "2r": 16}


@figure("lora-mlp-params-r16", COMPUTED, "lora_math.parameter_count(11008, 4096, 16): gate_proj of Llama-2-7B")
def _lora_mlp_params():
    out_f, in_f = LLAMA7.linear_shapes()["gate_proj"]
    return parameter_count(out_f, in_f, 16), {"a square 4096 x 4096 layer": parameter_count(4096, 4096, 16),
                                              "only A (r x in)": 16 * in_f}


@figure("lora-all-linear-params", COMPUTED, """memory.lora_trainable_params over the seven projections of
        Llama-2-7B's 32 layers at r = 8""")
def _lora_all_linear():
    shapes = LLAMA7.linear_shapes()
    attention = [shapes[m] for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
    total = lora_trainable_params(list(shapes.values()) * LLAMA7.n_layers, 8)
    return total, {"attention only (q, k, v, o)": lora_trainable_params(attention * LLAMA7.n_layers, 8),
                   "every matrix taken as 4096 x 4096": 7 * LLAMA7.n_layers * parameter_count(4096, 4096, 8)}


# ------------------------------------------------------------------------------------------------
# Chapter 0: memory anatomy
# ------------------------------------------------------------------------------------------------

def _states_gb(params: float, precision: str, optimizer: str) -> float:
    per = bytes_per_parameter(precision, optimizer)
    return params * (per["weights"] + per["gradients"] + per["optimizer_state"]) / GB


@figure("mem-7b-fp32-adam", COMPUTED, "7e9 x memory.bytes_per_parameter('fp32', 'adam') (4 + 4 + 8), in GB")
def _mem_7b_fp32_adam():
    gb = _states_gb(7e9, "fp32", "adam")
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB),
                "gradients forgotten, or 16-bit weights and gradients (2 + 2 + 8)": _states_gb(7e9, "fp32", "sgd_momentum"),
                "Adam's state forgotten": _states_gb(7e9, "fp32", "sgd")}


@figure("mem-activations-estimate", COMPUTED, "memory.activation_bytes(2048, 1, 4096, 32, 32) (Korthikanti et al. "
        "2022: sbh(34 + 5as/h) per layer), in GB")
def _mem_activations():
    gb = activation_bytes(2048, 1, 4096, 32, 32) / GB
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB),
                "the attention term left out (34 sbh: FlashAttention's figure)":
                    activation_bytes(2048, 1, 4096, 32, 32, "selective") / GB,
                "one layer": activation_bytes(2048, 1, 4096, 32, 1) / GB}


@figure("mem-llama7b-params", COMPUTED, "memory.PRESETS['Llama-2-7B'].num_parameters()")
def _mem_llama7b_params():
    p = LLAMA7.num_parameters()
    return p, {"tied input and output embeddings (lm_head forgotten)": p - LLAMA7.vocab_size * LLAMA7.hidden_size,
               "the name's 7e9": 7e9}


@figure("mem-adam-state-7b", COMPUTED, "7e9 x memory.bytes_per_parameter('fp32', 'adam')['optimizer_state'], in GB")
def _mem_adam_state():
    gb = 7e9 * bytes_per_parameter("fp32", "adam")["optimizer_state"] / GB
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB), "one state": gb / 2,
                "weights, gradients and state": _states_gb(7e9, "fp32", "adam")}


@figure("mem-bf16-autocast-bytes-per-param", COMPUTED, "memory.bytes_per_parameter('bf16_autocast', 'adam')['total']")
def _mem_bf16_autocast():
    return bytes_per_parameter("bf16_autocast", "adam")["total"], {
        "fp32 Adam's 16 (the bf16 copies forgotten)": bytes_per_parameter("fp32", "adam")["total"],
        "halved (mixed precision 'halves memory')": bytes_per_parameter("fp32", "adam")["total"] / 2}


@figure("mem-sgd-momentum-7b", COMPUTED, "7e9 x memory.bytes_per_parameter('fp32', 'sgd_momentum') (4 + 4 + 4), in GB")
def _mem_sgd_momentum():
    gb = _states_gb(7e9, "fp32", "sgd_momentum")
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB), "Adam's two states": _states_gb(7e9, "fp32", "adam"),
                "plain SGD (no momentum)": _states_gb(7e9, "fp32", "sgd")}


@figure("mem-accelerate-bf16-line", COMPUTED, """memory.accelerate_estimate(Llama-2-7B, 'bfloat16'): accelerate's
        own calculate_maximum_sizes and estimate_training_usage, offline, divided by the parameter count""")
def _mem_accelerate():
    acc = accelerate_estimate(LLAMA7, "bfloat16")
    params = LLAMA7.num_parameters()
    return acc["training"] / params, {"the sum of its entries": sum(acc["usage"].values()) / params,
                                      "Hugging Face's 18 for bf16 autocast": 18, "fp32 Adam's 16": 16}


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


# ------------------------------------------------------------------------------------------------
# Chapter 5: distributed
# ------------------------------------------------------------------------------------------------

@figure("dist-ring-allreduce-bytes", COMPUTED, "collectives.ring_all_reduce_bytes(100 MB, 4): 2(N - 1)/N x the buffer")
def _dist_ring():
    mb = ring_all_reduce_bytes(100e6, 4) / MB
    return mb, {"a reduce-scatter alone, (N - 1)/N": 75, "twice the buffer": 200, "the buffer once": 100,
                "MiB typed as MB": typed_in_other_unit(mb, MB, MIB)}


@figure("dist-zero1-bytes-per-param", CITED, """sharding_math.zero_bytes_per_parameter(1, 64): the ZeRO paper's
        (2 + 2 + K/N) with K = 12 (Rajbhandari et al. 2020, arXiv 1910.02054, Figure 1)""")
def _dist_zero1():
    return zero_bytes_per_parameter(1, 64), {"stage 2": zero_bytes_per_parameter(2, 64),
                                             "stage 3": zero_bytes_per_parameter(3, 64), "unsharded": 16}


@figure("dist-zero-paper-75b", CITED, """7.5e9 x sharding_math.zero_bytes_per_parameter(3, 64), in GB: the ZeRO
        paper's Figure 1, 120 -> 31.4 -> 16.6 -> 1.9 GB (Rajbhandari et al. 2020, arXiv 1910.02054)""")
def _dist_zero_75b():
    gb = 7.5e9 * zero_bytes_per_parameter(3, 64) / GB
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB),
                "stage 2": 7.5e9 * zero_bytes_per_parameter(2, 64) / GB}


@figure("dist-zero2-fp32-bytes", COMPUTED, "sharding_math.zero_bytes_per_parameter(2, 4, weight_bytes=4, "
        "grad_bytes=4, optimizer_bytes=8)")
def _dist_zero2_fp32():
    fp32 = dict(weight_bytes=4, grad_bytes=4, optimizer_bytes=8)
    return zero_bytes_per_parameter(2, 4, **fp32), {
        "stage 1 (gradients kept whole)": zero_bytes_per_parameter(1, 4, **fp32),
        "stage 3 (weights sharded too)": zero_bytes_per_parameter(3, 4, **fp32),
        "the paper's mixed precision (2 + 2 + 12)": zero_bytes_per_parameter(2, 4)}


@figure("dist-zero3-communication", CITED, """sharding_math.communication_volume(3) / communication_volume(0): 3 Psi vs
        2 Psi (Rajbhandari et al. 2020, section 7)""")
def _dist_zero3_comm():
    return communication_volume(3) / communication_volume(0), {"gloo's measured 2x (its reduce-scatter is an "
                                                               "all-reduce)": 2}


SEVENTY_B = dict(budget_gb=80, sharding_stage=3, batch_size=1, seq_len=4096)


@figure("dist-70b-gpus-zero3", COMPUTED, """memory_advisor.devices_needed('Llama-2-70B', budget_gb=80,
        sharding_stage=3, batch_size=1, seq_len=4096): the fewest 80 GB devices whose predicted allocator peak
        fits (fp16 weights and gradients, fp32 master copy and Adam moments, foreach step, every layer checkpointed)""")
def _dist_70b():
    devices, _ = devices_needed("Llama-2-70B", **SEVENTY_B)
    fused, _ = devices_needed("Llama-2-70B", optimizer_impl="fused", **SEVENTY_B)
    states_only = math.ceil(16 * PRESETS["Llama-2-70B"].num_parameters() / (80 * GB))
    return devices, {"model states only (16 bytes x parameters / 80 GB, rounded up)": states_only,
                     "the foreach step's temporaries forgotten (fused=True's count)": fused}


@figure("dist-lora-ddp-bytes", COMPUTED, "the q,v adapters' parameters (r = 8, Llama-2-7B) x 4 bytes, in MB")
def _dist_lora_ddp():
    mb = QV_R8 * 4 / MB
    return mb, {"MiB typed as MB": typed_in_other_unit(mb, MB, MIB), "bf16 gradients": mb / 2}


# ------------------------------------------------------------------------------------------------
# Chapter 6: QLoRA
# ------------------------------------------------------------------------------------------------

NF4_DQ_BITS = bits_per_parameter(4, 64, double_quant_block=256)


@figure("qlora-bits-plain", COMPUTED, "quant_math.bits_per_parameter(4, 64): 4 + 32/64")
def _qlora_bits_plain():
    return bits_per_parameter(4, 64), {"the codes alone": 4, "one fp16 scale per block": bits_per_parameter(4, 64, scale_bits=16)}


@figure("qlora-bits-double-quant", COMPUTED, "quant_math.bits_per_parameter(4, 64, double_quant_block=256): "
        "4 + 8/64 + 32/(64 x 256)")
def _qlora_bits_dq():
    return NF4_DQ_BITS, {"the second level's fp32 factors forgotten (4 + 8/64)": 4 + 8 / 64,
                         "without double quantization": bits_per_parameter(4, 64)}


@figure("qlora-double-quant-saving-65b", COMPUTED, "65e9 x (bits_per_parameter(4, 64) - bits_per_parameter(4, 64, "
        "double_quant_block=256)) / 8, in GB")
def _qlora_dq_saving():
    gb = 65e9 * (bits_per_parameter(4, 64) - NF4_DQ_BITS) / 8 / GB
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB), "bits, not bytes": gb * 8}


@figure("qlora-65b-base-gb", COMPUTED, "65e9 x quant_math.bits_per_parameter(4, 64, double_quant_block=256) / 8, in GB")
def _qlora_65b_base():
    gb = 65e9 * NF4_DQ_BITS / 8 / GB
    return gb, {"4 bits, the constants forgotten": 65e9 * 4 / 8 / GB,
                "without double quantization (4.5 bits)": 65e9 * bits_per_parameter(4, 64) / 8 / GB,
                "GiB typed as GB": typed_in_other_unit(gb, GB, GIB)}


@figure("qlora-full-finetune-65b", CITED, """65e9 x (2 + 2 + 8) bytes (bf16 weights and gradients, fp32 m and v),
        in GB: the QLoRA paper's '>780 GB' (Dettmers et al. 2023, section 1)""")
def _qlora_full_ft():
    gb = 65e9 * (2 + 2 + 8) / GB
    return gb, {"fp32 Adam's 16 bytes/param": _states_gb(65e9, "fp32", "adam"),
                "GiB typed as GB": typed_in_other_unit(gb, GB, GIB)}


@figure("qlora-8bit-adam-bytes", COMPUTED, "quant_math.optimizer_state_bytes(n, 2, '8bit', 4) / n for a large tensor "
        "(n = 2^24): one uint8 per value and an fp32 absmax per block of 2048, for m and v")
def _qlora_8bit_adam():
    n = 2**24
    return optimizer_state_bytes(n, 2, "8bit", 4) / n, {"one state": optimizer_state_bytes(n, 1, "8bit", 4) / n,
                                                        "fp32 m and v": optimizer_state_bytes(n, 2, "fp32", 4) / n}


# ------------------------------------------------------------------------------------------------
# Running them, and the cache
# ------------------------------------------------------------------------------------------------

def section_outputs(notebook: str, heading: str) -> str:
    """Everything the cells of one notebook section printed or displayed when the notebook last ran
    (scripts/build_notebooks.py stores the outputs): the run behind a measured figure. notebook:
    '01_lora.ipynb'; heading: the section's heading without its #s."""
    path = find_repo_root() / "notebooks" / notebook
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    texts, inside = [], False
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if re.match(r"#+ ", line):
                    level = len(line) - len(line.lstrip("#"))
                    if line.lstrip("#").strip() == heading:
                        inside, depth = True, level
                    elif inside and level <= depth:
                        inside = False
            continue
        if inside:
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                texts.append("".join(out.get("text") or data.get("text/markdown") or data.get("text/plain") or ""))
    if not texts:
        raise LookupError(f"no outputs under {heading!r} in {path} (run scripts/build_notebooks.py first)")
    return "\n".join(texts)


def measured_number(notebook: str, heading: str, pattern: str) -> float:
    """The first number `pattern` (a regex with one group) finds in a section's stored outputs."""
    found = re.search(pattern, section_outputs(notebook, heading))
    if found is None:
        raise LookupError(f"{pattern!r} not found in the outputs of {notebook} § {heading}")
    return float(found.group(1).replace(",", ""))


def compute_all() -> dict[str, dict]:
    """Every figure, freshly computed: card id -> {"value", "kind", "how", "wrong": [[why, value], ...]}."""
    table = {}
    for card_id, fig in FIGURES.items():
        value, wrong = fig.compute()
        table[card_id] = {"value": float(value), "kind": fig.kind, "how": fig.describe(),
                          "wrong": [[why, float(v)] for why, v in wrong.items()]}
    return table


def figures_path() -> Path:
    return default_bank_path().with_name(FIGURES_FILE)


def stale(cached: dict[str, dict], fresh: dict[str, dict], rel_tol: float = 1e-9) -> list[str]:
    """What differs between the cache and a fresh computation, one line per figure."""
    problems = [f"{cid}: in the cache, no longer computed" for cid in cached.keys() - fresh.keys()]
    problems += [f"{cid}: computed, not in the cache" for cid in fresh.keys() - cached.keys()]
    for cid in sorted(cached.keys() & fresh.keys()):
        old, new = cached[cid], fresh[cid]
        if not math.isclose(old["value"], new["value"], rel_tol=rel_tol):
            problems.append(f"{cid}: cached {old['value']!r}, the library now gives {new['value']!r}")
        elif (old["how"], old["kind"], len(old["wrong"])) != (new["how"], new["kind"], len(new["wrong"])) or not all(
                w0 == w1 and math.isclose(v0, v1, rel_tol=rel_tol) for (w0, v0), (w1, v1) in zip(old["wrong"], new["wrong"])):
            problems.append(f"{cid}: its description or wrong methods changed")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m efftrain_lib.drill.figures",
                                     description="Check (default) or rewrite the drill's computed figures.")
    parser.add_argument("--write", action="store_true", help=f"recompute and write {FIGURES_FILE}")
    args = parser.parse_args(argv)
    path, fresh = figures_path(), compute_all()
    if args.write:
        note = "Generated by `python -m efftrain_lib.drill.figures --write` from efftrain_lib/drill/figures.py."
        path.write_text(json.dumps({"note": note, "figures": fresh}, indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        print(f"wrote {len(fresh)} figures to {path}")
        return 0
    cached = json.loads(path.read_text(encoding="utf-8"))["figures"] if path.exists() else {}
    problems = stale(cached, fresh)
    for line in problems:
        print(line)
    print(f"{len(fresh)} figures, {len(problems)} stale" + (": run with --write" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

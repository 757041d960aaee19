"""The figures of chapters 0 and 1 (memory anatomy, LoRA): see efftrain_lib/drill/figures_registry.py."""

from __future__ import annotations

from efftrain_lib.drill.figures_registry import (CITED, COMPUTED, GB, GIB, MB, MEASURED, MIB, figure, measured_number,
                                                 typed_in_other_unit)
from efftrain_lib.lora_math import parameter_count, scaling
from efftrain_lib.memory import (PRESETS, accelerate_estimate, activation_bytes, bytes_per_parameter,
                                 estimate_training_memory, lora_trainable_params)
from efftrain_lib.quant_math import bits_per_parameter, optimizer_state_bytes

LLAMA7 = PRESETS["Llama-2-7B"]
QV_R8 = lora_trainable_params([LLAMA7.linear_shapes()[m] for m in ("q_proj", "v_proj")] * LLAMA7.n_layers, 8)

# ------------------------------------------------------------------------------------------------
# Chapter 0: memory anatomy
# ------------------------------------------------------------------------------------------------

def states_gb(params: float, precision: str, optimizer: str) -> float:
    per = bytes_per_parameter(precision, optimizer)
    return params * (per["weights"] + per["gradients"] + per["optimizer_state"]) / GB


@figure("mem-7b-fp32-adam", COMPUTED, "7e9 x memory.bytes_per_parameter('fp32', 'adam') (4 + 4 + 8), in GB")
def _mem_7b_fp32_adam():
    gb = states_gb(7e9, "fp32", "adam")
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB),
                "gradients forgotten, or 16-bit weights and gradients (2 + 2 + 8)": states_gb(7e9, "fp32", "sgd_momentum"),
                "Adam's state forgotten": states_gb(7e9, "fp32", "sgd")}


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
                "weights, gradients and state": states_gb(7e9, "fp32", "adam")}


@figure("mem-bf16-autocast-bytes-per-param", COMPUTED, "memory.bytes_per_parameter('bf16_autocast', 'adam')['total']")
def _mem_bf16_autocast():
    return bytes_per_parameter("bf16_autocast", "adam")["total"], {
        "fp32 Adam's 16 (the bf16 copies forgotten)": bytes_per_parameter("fp32", "adam")["total"],
        "halved (mixed precision 'halves memory')": bytes_per_parameter("fp32", "adam")["total"] / 2}


@figure("mem-sgd-momentum-7b", COMPUTED, "7e9 x memory.bytes_per_parameter('fp32', 'sgd_momentum') (4 + 4 + 4), in GB")
def _mem_sgd_momentum():
    gb = states_gb(7e9, "fp32", "sgd_momentum")
    return gb, {"GiB typed as GB": typed_in_other_unit(gb, GB, GIB), "Adam's two states": states_gb(7e9, "fp32", "adam"),
                "plain SGD (no momentum)": states_gb(7e9, "fp32", "sgd")}


@figure("mem-accelerate-bf16-line", COMPUTED, """memory.accelerate_estimate(Llama-2-7B, 'bfloat16'): accelerate's
        own calculate_maximum_sizes and estimate_training_usage, offline, divided by the parameter count""")
def _mem_accelerate():
    acc = accelerate_estimate(LLAMA7, "bfloat16")
    params = LLAMA7.num_parameters()
    return acc["training"] / params, {"the sum of its entries": sum(acc["usage"].values()) / params,
                                      "Hugging Face's 18 for bf16 autocast": 18, "fp32 Adam's 16": 16}


def _llama7_fp32_step(**options):
    return estimate_training_memory(LLAMA7, batch_size=1, seq_len=2048, precision="fp32", optimizer="adamw", **options)


@figure("mem-optimizer-step-peak", COMPUTED, """memory.estimate_training_memory('Llama-2-7B', batch_size=1,
        seq_len=2048, precision='fp32', optimizer='adamw').allocator_peak (optimizer_impl='foreach', torch's default
        on CUDA), in GB""")
def _mem_optimizer_step_peak():
    gb = _llama7_fp32_step().allocator_peak / GB
    return gb, {"fused=True's peak: the tensors held, no step temporaries":
                    _llama7_fp32_step(optimizer_impl="fused").allocator_peak / GB,
                "the for-loop implementation's (CPU's default)": _llama7_fp32_step(optimizer_impl="for-loop").allocator_peak / GB,
                "GiB typed as GB": typed_in_other_unit(gb, GB, GIB)}


@figure("mem-optimizer-state-8bit", COMPUTED, """7e9 x quant_math.optimizer_state_bytes(n, 2, '8bit', 4) / n
        (m and v in 8 bits, an fp32 absmax per block of 2048), in GB""")
def _mem_optimizer_state_8bit():
    n = 2**24
    gb = 7e9 * optimizer_state_bytes(n, 2, "8bit", 4) / n / GB
    return gb, {"fp32 m and v": 7e9 * 8 / GB, "one state in 8 bits": gb / 2, "GiB typed as GB": typed_in_other_unit(gb, GB, GIB)}


@figure("mem-adafactor-state", CITED, """Shazeer and Stern 2018 (Adafactor, arXiv 1804.04235): the second moment of an
        n x m matrix factored into a row and a column vector, n + m fp32 values (beta1 = 0: no momentum), for
        Llama-2-7B's gate_proj (11008 x 4096), in KB""")
def _mem_adafactor_state():
    out_f, in_f = LLAMA7.linear_shapes()["gate_proj"]
    kb = (out_f + in_f) * 4 / 1e3
    return kb, {"Adam's m and v (8 bytes per weight)": out_f * in_f * 8 / 1e3,
                "an unfactored v (4 bytes per weight)": out_f * in_f * 4 / 1e3,
                "KiB typed as KB": typed_in_other_unit(kb, 1e3, 2**10)}


@figure("mem-logits-memory", COMPUTED, """tokens x memory.PRESETS['Llama-3-8B'].vocab_size x 4 bytes (fp32 logits) for
        one sequence of 8,192 tokens, in GB""")
def _mem_logits():
    vocab = PRESETS["Llama-3-8B"].vocab_size
    gb = 8192 * vocab * 4 / GB
    return gb, {"bf16 logits (2 bytes)": gb / 2, "GiB typed as GB": typed_in_other_unit(gb, GB, GIB),
                "Llama-2's 32,000-token vocabulary": 8192 * LLAMA7.vocab_size * 4 / GB}


@figure("mem-cuda-allocator-rounding", CITED, """PyTorch's CUDA caching allocator rounds every block up to a multiple of
        512 bytes (kMinBlockSize in c10/cuda/CUDACachingAllocator.cpp; torch 2.x): a 4,000-byte tensor takes 4,096""")
def _mem_cuda_rounding():
    nbytes = 1000 * 4
    return -(-nbytes // 512) * 512, {"the tensor's own bytes": nbytes,
                                     "the 2 MiB segment it is carved from (memory_reserved)": 2 * MIB}


@figure("mem-autocast-activations-ratio", MEASURED, """00_memory_anatomy.ipynb § 11. Myths vs measurement, as
        scripts/build_notebooks.py last ran it: one AdamW step of the tiny transformer (batch 8 x 64 tokens), fp32 vs
        bf16 autocast, CPU accounting of the tensors saved for backward ('Activations 0.68x')""")
def _mem_autocast_ratio():
    ratio = measured_number("00_memory_anatomy.ipynb", "11. Myths vs measurement", r"Activations ([\d.]+)x")
    return ratio, {"half ('mixed precision halves memory')": 0.5, "unchanged": 1.0}


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

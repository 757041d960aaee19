"""The figures of chapters 5 and 6 (data parallelism and ZeRO, QLoRA): see
efftrain_lib/drill/figures_registry.py."""

from __future__ import annotations

import math

from efftrain_lib.collectives import ring_all_reduce_bytes
from efftrain_lib.drill.figures_memory_lora import QV_R8, states_gb
from efftrain_lib.drill.figures_registry import CITED, COMPUTED, GB, GIB, MB, MIB, figure, typed_in_other_unit
from efftrain_lib.memory import PRESETS
from efftrain_lib.memory_advisor import devices_needed
from efftrain_lib.quant_math import bits_per_parameter, optimizer_state_bytes
from efftrain_lib.sharding_math import communication_volume, zero_bytes_per_parameter

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
    return gb, {"fp32 Adam's 16 bytes/param": states_gb(65e9, "fp32", "adam"),
                "GiB typed as GB": typed_in_other_unit(gb, GB, GIB)}


@figure("qlora-8bit-adam-bytes", COMPUTED, "quant_math.optimizer_state_bytes(n, 2, '8bit', 4) / n for a large tensor "
        "(n = 2^24): one uint8 per value and an fp32 absmax per block of 2048, for m and v")
def _qlora_8bit_adam():
    n = 2**24
    return optimizer_state_bytes(n, 2, "8bit", 4) / n, {"one state": optimizer_state_bytes(n, 1, "8bit", 4) / n,
                                                        "fp32 m and v": optimizer_state_bytes(n, 2, "fp32", 4) / n}

"""efftrain_lib: the shared library of the efftrain course.

One module per concern, in layers that import only downward (ARCHITECTURE.md draws them;
tests/test_architecture.py holds them):

Foundation:
  devices         device, autocast, seeding          losses          the token-normalised loss
  models          the tiny LLaMA-style transformer   data            texts, tokenizer, batches
  comparing       max_abs_diff, gradient_dict        timing          interleaved timing rounds
  lora_math       LoRA's scaling, parameter count    number_formats  fp32 / fp16 / bf16 bit by bit
  quant_math      bytes and bits of block-wise formats (4.5, 4.127 bits per parameter)
  launcher        N ranks from a notebook            sharding_math   ZeRO's bytes per parameter by stage
Loop:
  training        the one training step and the loop around it
Techniques (the hardened versions the notebooks build up to):
  lora            LoRA, rsLoRA and DoRA              adapters        PEFT's on-disk adapter format
  checkpointing   gradient checkpointing             precision       the loss scaler, autocast tables
  accumulation    gradient accumulation              reference_models  a tiny Llama and the PEFT bridge
  quantization    block-wise absmax, NF4, double     qlora           the 4-bit base under LoRA, merging
                  quantization, packed storage
  optim8bit       AdamW with 8-bit state             nf4_reference   torchao's NF4 (the reference)
  data_parallel   DDP from scratch                   sharding        ZeRO-1/2 from scratch, fully_shard
  distributed     chapter 5's exercise API, gathered
Measuring:
  meter           the memory meter (exact CPU accounting, or the CUDA allocator)
  saved_tensors   what autograd keeps for backward   memory          the training-memory estimator
  memory_replay   the estimator's symbolic replay    memory_validation  estimator vs meter, run for real
  collectives     collectives counted, bytes sent
Exploring:
  liveplot        the live memory plot               widgets         the sliders' shared shell
  *_explorer      each chapter's slider logic        memory_advisor  "which technique do I need?"
  distributed_runs, sharding_runs  chapter 5's experiments, run in every rank
  distributed_train                the torchrun entry point
  planner         fit a model to a budget: plans, their peak and step time, the choice, the why-table
  plan_runs       a plan run for real, measured against it   fit   the planner as a tool (python -m)
  capstone        chapter 7's exercise API, gathered
Teaching:
  chapters        the chapter registry               grade, grading  the exercise grader
  grade_runner, grade_child  where the learner's code runs: a child process the grader can kill
  drill/          interview drill cards, one module per job (bank, answers, progress, session,
                  terminal, widget)
"""

import logging

__version__ = "0.1.0"

# torchao (the QLoRA chapter's reference) is imported by peft and transformers whenever it is installed, and
# its import logs to stderr on a CPU-only torch: CUDA kernels it cannot load ("torchao") and a deprecated pytree
# registration of its enums ("torch.utils._pytree"). Neither concerns the course, and notebooks must not write
# to stderr, so those two loggers report errors only. (Nothing else of logging is touched.)
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

"""efftrain_lib: the shared library of the efftrain course.

One module per concern.

Techniques (the hardened versions the notebooks build up to):
  lora            LoRA, rsLoRA and DoRA             adapters        PEFT's on-disk adapter format
  checkpointing   gradient checkpointing            precision       the loss scaler, autocast tables
  accumulation    gradient accumulation             number_formats  fp32 / fp16 / bf16 bit by bit
Measurement:
  meter           the memory meter (exact CPU accounting, or the CUDA allocator)
  memory          the training-memory estimator     memory_advisor  "which technique do I need?"
Teaching aids:
  liveplot        the live memory plot              drill           interview drill cards
  *_explorer      each chapter's slider logic (pure functions + thin ipywidgets shells)
Infrastructure:
  devices         device, dtype, seeding            models          the tiny LLaMA-style transformer
  data            texts, tokenizer, batches         training        the training loop
  reference_models  a tiny LlamaForCausalLM and the bridge to PEFT
  grade, grading  the exercise grader (python -m efftrain_lib.grade CHAPTER)
  grade_runner, grade_child  where the learner's code runs: a child process the grader can kill
"""

__version__ = "0.1.0"

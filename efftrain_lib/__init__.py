"""efftrain_lib: the shared library of the efftrain course.

One module per concern:
  devices   - device, autocast dtype and seeding helpers
  models    - the tiny LLaMA-style transformer every chapter trains
  data      - the course's small texts, a character tokenizer, batches
  training  - a small training loop with a progress bar
  meter     - the memory meter (CUDA allocator or exact CPU accounting)
  liveplot  - the live memory plot
  lora      - LoRA, rsLoRA and DoRA built from scratch, hardened
  adapters  - saving and loading LoRA adapters in PEFT's on-disk format
  reference_models - a tiny LlamaForCausalLM and the bridge to PEFT, for checking against it
  lora_explorer    - the LoRA chapter's slider logic
  grade     - the exercise grader (python -m efftrain_lib.grade CHAPTER)
  drill     - interview drill cards (python -m efftrain_lib.drill)
"""

__version__ = "0.1.0"

"""Chapter 0 exercises: memory arithmetic.

Fill in the functions below, then grade them, from notebooks/00_memory_anatomy.ipynb:
    from efftrain_lib.grade import check; check("memory_math")
or from a terminal at the repository root:
    python -m efftrain_lib.grade memory_math
Keep the names and signatures: the graders call exactly these. solutions/memory_math.py has answers
(try first!). Bad input must raise ValueError with a message that says what is wrong.
"""

OPTIMIZERS = ("adam", "sgd", "sgd_momentum")


def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False) -> int:
    """Bytes of the model states for training `num_params` parameters: weights + gradients + optimizer
    state (+ an fp32 master copy of the weights when master_weights=True).

    weight_bytes, grad_bytes: bytes per element (4 for fp32, 2 for bf16/fp16).
    optimizer: "adam" (two fp32 states, m and v), "sgd_momentum" (one fp32 state), "sgd" (none).
    Optimizer state is fp32 (4 bytes per element) whatever the weights' dtype.
    Raise ValueError for a non-positive num_params, weight_bytes or grad_bytes, or an unknown optimizer.
    """
    raise NotImplementedError(
        "Exercise 0.1: training_memory_bytes (see notebooks/00_memory_anatomy.ipynb, "
        "'Exercise 0.1: training memory in bytes')"
    )


def lora_trainable_params(shapes, rank) -> int:
    """Trainable parameters of a rank-`rank` LoRA on every layer in `shapes`, a list of
    (out_features, in_features): A is rank x in_features, B is out_features x rank.

    Raise ValueError for a non-positive rank or layer size, or a rank larger than a layer allows
    (rank > min(out_features, in_features)).
    """
    raise NotImplementedError(
        "Exercise 0.2: lora_trainable_params (see notebooks/00_memory_anatomy.ipynb, "
        "'Exercise 0.2: LoRA's trainable parameters')"
    )


def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none") -> int:
    """Activation memory of a GPT-style transformer by Korthikanti et al. 2022 (16-bit activations,
    no tensor parallelism), per layer:
        recompute="none":      s*b*h*(34 + 5*a*s/h)   (the 5as/h term: attention scores, softmax, dropout mask)
        recompute="selective": 34*s*b*h               (the attention part recomputed)
        recompute="full":      2*s*b*h                (only each layer's input kept)
    times n_layers, as an int (round down). Raise ValueError for non-positive sizes or an unknown
    recompute name.
    """
    raise NotImplementedError(
        "Exercise 0.3: activation_bytes (see notebooks/00_memory_anatomy.ipynb, "
        "'Exercise 0.3: activations by Korthikanti's formula')"
    )


STEP_OPTIMIZERS = ("adam", "adamw", "sgd", "sgd_momentum")
IMPLEMENTATIONS = ("foreach", "for-loop", "fused")


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes) -> int:
    """Bytes a torch.optim optimizer allocates inside one step() beyond the state it keeps (a later step:
    the state already exists), for trainable parameters of `trainable_numels` elements, in the order the
    optimizer holds them.

    optimizer: "adam", "adamw", "sgd" or "sgd_momentum"; impl: "foreach" (torch.optim's default on CUDA),
    "for-loop" (foreach=False, the default on CPU) or "fused" (fused=True); state_bytes: bytes per element
    of the optimizer state, which torch keeps in the parameters' dtype (4 for fp32, 2 for bf16).
    The notebook does not give the rule: measure it, with efftrain_lib.meter.profiler_peak_bytes(opt.step)
    (notebook section 7). The grader compares your answer with torch.profiler's measurement on this machine;
    it may be up to 16 bytes below it (the step counters). Return an int; raise ValueError for an unknown
    optimizer or impl (naming it) and for a state_bytes or element count <= 0.
    """
    raise NotImplementedError(
        "Exercise 0.4: optimizer_step_temporaries (see notebooks/00_memory_anatomy.ipynb, "
        "'Exercise 0.4: the optimizer step's temporaries')"
    )

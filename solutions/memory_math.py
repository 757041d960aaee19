"""Chapter 0 reference solutions: memory arithmetic, as you would write it on a whiteboard."""

# Optimizer state elements per parameter; each element is an fp32 number (4 bytes).
OPTIMIZERS = {"adam": 2, "sgd_momentum": 1, "sgd": 0}  # Adam: m and v; momentum: one buffer; SGD: none


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def training_memory_bytes(num_params, *, weight_bytes, grad_bytes, optimizer, master_weights=False) -> int:
    _positive("num_params", num_params)
    _positive("weight_bytes", weight_bytes)
    _positive("grad_bytes", grad_bytes)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    per_param = weight_bytes + grad_bytes + 4 * OPTIMIZERS[optimizer]  # states are fp32 whatever the weights
    if master_weights:
        per_param += 4  # the fp32 copy the optimizer updates (mixed precision keeps it)
    return int(num_params * per_param)


def lora_trainable_params(shapes, rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    total = 0
    for out_features, in_features in shapes:
        if out_features < 1 or in_features < 1:
            raise ValueError(f"layer sizes must be positive, got {out_features} x {in_features}")
        if rank > min(out_features, in_features):
            raise ValueError(f"rank {rank} is larger than layer {out_features} x {in_features} allows "
                             f"(at most {min(out_features, in_features)})")
        total += rank * in_features + out_features * rank  # A: r x in, B: out x r  -> (d + k) r, not d k r
    return total


RECOMPUTE = ("none", "selective", "full")


def activation_bytes(seq_len, batch_size, hidden_size, n_heads, n_layers, recompute="none") -> int:
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("hidden_size", hidden_size),
                        ("n_heads", n_heads), ("n_layers", n_layers)):
        _positive(name, value)
    s, b, h, a = seq_len, batch_size, hidden_size, n_heads
    if recompute == "none":
        per_layer = s * b * h * (34 + 5 * a * s / h)  # 34sbh (linear parts) + 5as^2b (scores, softmax, mask)
    elif recompute == "selective":
        per_layer = 34 * s * b * h
    elif recompute == "full":
        per_layer = 2 * s * b * h  # each layer's 16-bit input
    else:
        raise ValueError(f"unknown recompute {recompute!r}; choose from {', '.join(RECOMPUTE)}")
    return int(per_layer * n_layers)


# Exercise 0.4: the optimizer step's temporaries -----------------------------------------------------
# Measured with efftrain_lib.meter.profiler_peak_bytes(optimizer.step) on a later step (the state exists).
STEP_OPTIMIZERS = {"adam": True, "adamw": True, "sgd": False, "sgd_momentum": False}  # makes sqrt(v)?
IMPLEMENTATIONS = ("foreach", "for-loop", "fused")


def optimizer_step_temporaries(optimizer, impl, trainable_numels, state_bytes) -> int:
    if optimizer not in STEP_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {', '.join(STEP_OPTIMIZERS)}")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown impl {impl!r}; choose from {', '.join(IMPLEMENTATIONS)}")
    _positive("state_bytes", state_bytes)
    numels = list(trainable_numels)
    for n in numels:
        _positive("every element count", n)
    # SGD (momentum too) updates in place; fused does Adam's whole update in one kernel per parameter.
    if not STEP_OPTIMIZERS[optimizer] or impl == "fused" or not numels:
        return 0
    if impl == "foreach":
        return sum(numels) * state_bytes  # torch._foreach_sqrt(v): a new tensor per parameter, all alive at once
    # for-loop, parameter i: sqrt(v_i) and its division by the bias correction are alive together, and the
    # previous parameter's result (`denom`, a local not yet reassigned) is still alive: 2 n_i + n_(i-1).
    previous = [0] + numels[:-1]
    return max(2 * n + before for n, before in zip(numels, previous)) * state_bytes

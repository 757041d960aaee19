"""Chapter 4 exercises: gradient accumulation that is exactly a big batch.

Fill in the functions and the class below, then grade them, from notebooks/04_gradient_accumulation.ipynb:
    from efftrain_lib.grade import check; check("accumulation")
or from a terminal at the repository root:
    python -m efftrain_lib.grade accumulation
Keep the names and signatures: the graders call exactly these. solutions/accumulation.py has answers
(try first!).
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

IGNORE_INDEX = -100  # labels equal to this are not counted in the loss


def accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None, scheduler=None,
                      autocast_dtype=None):
    """Exactly one optimizer step over a window of micro-batches; return the window's loss (a float).

    micro_batches: a list of (inputs, labels). model(inputs) returns logits [..., num_classes]; labels have
    the logits' leading shape, with -100 at positions to ignore.
    The step's gradient must equal the gradient of the token-mean cross-entropy over every labelled
    position of the whole window (one big batch), even when micro-batches hold different token counts.
    scaler (a torch.amp.GradScaler or the same interface): scale every micro-batch's loss; unscale_ (if
    clipping), clip, step and update once per window. max_grad_norm: clip the window's gradient.
    scheduler: step it once, after the optimizer step.
    autocast_dtype: None (fp32), torch.bfloat16 or torch.float16 (with a scaler): run every forward under
    torch.autocast(device type, dtype=autocast_dtype); compute the loss in fp32.
    Every combination of these options must work (a scaler with clipping and a scheduler under bf16, ...).
    Raise ValueError for an empty window, a window with no labelled position, and labels whose shape
    does not match the logits.
    """
    raise NotImplementedError(
        "Exercise 4.1: accumulation_step (see notebooks/04_gradient_accumulation.ipynb, "
        "'Exercise 4.1: accumulation_step')"
    )


class GradientAccumulator:
    """GradientAccumulator(model, optimizer, accumulation_steps, *, scaler=None, max_grad_norm=None,
    scheduler=None, autocast_dtype=None); train(batches) -> list of window losses.

    train walks the batches in windows of accumulation_steps, one optimizer step per window, including a
    final partial window, and normalizes every window by its own labelled-token count; every window (the
    partial one too) uses every option given. accumulation_steps < 1 is a ValueError.
    """

    def __init__(self, model, optimizer, accumulation_steps, *, scaler=None, max_grad_norm=None, scheduler=None,
                 autocast_dtype=None):
        raise NotImplementedError(
            "Exercise 4.2: GradientAccumulator (see notebooks/04_gradient_accumulation.ipynb, "
            "'Exercise 4.2: GradientAccumulator')"
        )

    def train(self, batches):
        raise NotImplementedError(
            "Exercise 4.2: GradientAccumulator.train (see notebooks/04_gradient_accumulation.ipynb, "
            "'Exercise 4.2: GradientAccumulator')"
        )


def streaming_accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None,
                                scheduler=None, autocast_dtype=None):
    """accumulation_step over a stream: the same options, the same gradient, the same loss and errors, but
    micro_batches is an iterator (a generator that tokenizes on the fly, say) that you may read only one
    micro-batch at a time: pull micro-batch i + 1 only after micro-batch i's backward, so that one
    micro-batch is held in memory however long the window. You cannot count the window's labelled tokens
    before the first backward. The step's gradient must still equal the token-mean gradient of the whole
    window, under every option. An empty stream, or one with no labelled position: ValueError, no
    optimizer step, no gradient left behind.
    """
    raise NotImplementedError(
        "Exercise 4.3: streaming_accumulation_step (see notebooks/04_gradient_accumulation.ipynb, "
        "'Exercise 4.3: a stream')"
    )

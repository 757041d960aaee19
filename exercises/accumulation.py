"""Chapter 4 exercises: gradient accumulation that is exactly a big batch.

Fill in the function and the class below, then grade them, from notebooks/04_gradient_accumulation.ipynb:
    from efftrain_lib.grade import check; check("accumulation")
or from a terminal at the repository root:
    python -m efftrain_lib.grade accumulation
Keep the names and signatures: the graders call exactly these. solutions/accumulation.py has answers
(try first!).
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

IGNORE_INDEX = -100  # labels equal to this are not counted in the loss


def accumulation_step(model, optimizer, micro_batches, *, scaler=None, max_grad_norm=None, scheduler=None):
    """Exactly one optimizer step over a window of micro-batches; return the window's loss (a float).

    micro_batches: a list of (inputs, labels). model(inputs) returns logits [..., num_classes]; labels have
    the logits' leading shape, with -100 at positions to ignore.
    The step's gradient must equal the gradient of the token-mean cross-entropy over every labelled
    position of the whole window (one big batch), even when micro-batches hold different token counts.
    scaler (a torch.amp.GradScaler or the same interface): scale every micro-batch's loss; unscale_ (if
    clipping), clip, step and update once per window. max_grad_norm: clip the window's gradient.
    scheduler: step it once, after the optimizer step.
    Raise ValueError for an empty window, a window with no labelled position, and labels whose shape
    does not match the logits.
    """
    raise NotImplementedError(
        "Exercise 4.1: accumulation_step (see notebooks/04_gradient_accumulation.ipynb, "
        "'Exercise 4.1: accumulation_step')"
    )


class GradientAccumulator:
    """GradientAccumulator(model, optimizer, accumulation_steps, *, scaler=None, max_grad_norm=None,
    scheduler=None); train(batches) -> list of window losses.

    train walks the batches in windows of accumulation_steps, one optimizer step per window, including a
    final partial window, and normalizes every window by its own labelled-token count.
    accumulation_steps < 1 is a ValueError.
    """

    def __init__(self, model, optimizer, accumulation_steps, *, scaler=None, max_grad_norm=None, scheduler=None):
        raise NotImplementedError(
            "Exercise 4.2: GradientAccumulator (see notebooks/04_gradient_accumulation.ipynb, "
            "'Exercise 4.2: GradientAccumulator')"
        )

    def train(self, batches):
        raise NotImplementedError(
            "Exercise 4.2: GradientAccumulator.train (see notebooks/04_gradient_accumulation.ipynb, "
            "'Exercise 4.2: GradientAccumulator')"
        )

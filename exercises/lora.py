"""Chapter 1 exercises: LoRA from scratch.

Fill in the functions below, then grade them, from notebooks/01_lora.ipynb:
    from efftrain_lib.grade import check; check("lora")
or from a terminal at the repository root:
    python -m efftrain_lib.grade lora
Keep the names and signatures: the graders call exactly these. solutions/lora.py has answers
(try first!).
"""

import math  # noqa: F401  (you will want math.sqrt for the Kaiming init)

import torch  # noqa: F401
import torch.nn as nn
import torch.nn.functional as F  # noqa: F401


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update.

    forward(x) = base(x) + dropout(x) @ lora_A.T @ lora_B.T * scaling

    Attributes the graders read:
      base     the wrapped nn.Linear, frozen (weight and bias: requires_grad False)
      lora_A   nn.Parameter, rank x in_features, kaiming_uniform_(a=math.sqrt(5)) like PEFT
      lora_B   nn.Parameter, out_features x rank, zeros
      scaling  alpha / rank
    Dropout (probability `dropout`) acts on the LoRA branch's input only, and only in train mode.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        raise NotImplementedError(
            "Exercise 1.1: build LoRALinear (see notebooks/01_lora.ipynb, 'Exercise 1.1: LoRALinear')"
        )

    def forward(self, x):
        raise NotImplementedError(
            "Exercise 1.1: LoRALinear.forward (see notebooks/01_lora.ipynb, 'Exercise 1.1: LoRALinear')"
        )

    def merge(self) -> None:
        """Add the scaled update B @ A * scaling into base.weight; forward must then skip the branch."""
        raise NotImplementedError(
            "Exercise 1.2: LoRALinear.merge (see notebooks/01_lora.ipynb, 'Exercise 1.2: merge and unmerge')"
        )

    def unmerge(self) -> None:
        """Take the update back out of base.weight; forward adds the branch again."""
        raise NotImplementedError(
            "Exercise 1.2: LoRALinear.unmerge (see notebooks/01_lora.ipynb, 'Exercise 1.2: merge and unmerge')"
        )


def apply_lora(model: nn.Module, target_modules, rank: int, alpha: float, dropout: float = 0.0):
    """Replace, in place, every nn.Linear whose full name equals a target or ends with "." + target
    by a LoRALinear; freeze every other parameter; return the model."""
    raise NotImplementedError(
        "Exercise 1.3: apply_lora (see notebooks/01_lora.ipynb, 'Exercise 1.3: apply_lora')"
    )


def count_parameters(model: nn.Module):
    """Return (trainable, total) parameter counts."""
    raise NotImplementedError(
        "Exercise 1.4: count_parameters (see notebooks/01_lora.ipynb, 'Exercise 1.4: count_parameters')"
    )


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024) from your LoRALinear: LoRA on the direction of W, and a trainable magnitude
    per output row.

        forward(x) = (m / n) * (W x + scaling * B A x) + bias,   n = ||W + scaling * B @ A|| per output row,

    with n treated as a constant in backward (detached, as the paper's section 4.3 recommends and PEFT does).
    Attributes the graders read: those of LoRALinear, plus
      magnitude  nn.Parameter of out_features values, the row norms of W at init (so the layer starts
                 exactly at base(x)).
    Dropout, in train mode, as PEFT applies it: the base keeps the clean x, and one mask, drawn once with
    the layer's nn.Dropout on x, feeds both the direction term and the LoRA branch:
        forward(x) = base(x) + (m / n - 1) * (W dropout(x)) + (m / n) * scaling * B A dropout(x)
    (without dropout, or in eval mode, this is the formula above).
    merge() folds it all into base.weight (the bias stays as it is), so forward is base(x) alone; unmerge()
    gives W back (up to rounding). The notebook does not show this class: the grader compares it with
    PEFT's DoRA (peft.tuners.lora.Linear with use_dora=True) in every combination of bias, dropout, train
    and eval mode, merged and unmerged.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        # start from your LoRALinear: super().__init__(base, rank, alpha, dropout), then add the magnitude
        raise NotImplementedError(
            "Exercise 1.5: DoRALinear (see notebooks/01_lora.ipynb, 'Exercise 1.5: DoRA from LoRA')"
        )

    def forward(self, x):
        raise NotImplementedError(
            "Exercise 1.5: DoRALinear.forward (see notebooks/01_lora.ipynb, 'Exercise 1.5: DoRA from LoRA')"
        )

    def merge(self) -> None:
        raise NotImplementedError(
            "Exercise 1.5: DoRALinear.merge (see notebooks/01_lora.ipynb, 'Exercise 1.5: DoRA from LoRA')"
        )

    def unmerge(self) -> None:
        raise NotImplementedError(
            "Exercise 1.5: DoRALinear.unmerge (see notebooks/01_lora.ipynb, 'Exercise 1.5: DoRA from LoRA')"
        )

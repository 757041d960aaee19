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

"""Chapter 3 exercises: a dynamic loss scaler from scratch (torch.amp.GradScaler's rules).

Fill in the methods below, then grade them, from notebooks/03_mixed_precision.ipynb:
    from efftrain_lib.grade import check; check("loss_scaling")
or from a terminal at the repository root:
    python -m efftrain_lib.grade loss_scaling
Keep the names and signatures: the graders call exactly these, and compare what they do with
torch.amp.GradScaler("cpu"). solutions/loss_scaling.py has answers (try first!).
"""

import math  # noqa: F401  (math.isfinite, math.inf)

import torch  # noqa: F401

_NB = "see notebooks/03_mixed_precision.ipynb"


class LossScaler:
    """Dynamic loss scaling.

    LossScaler(init_scale=2.**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)
      raises ValueError for growth_factor <= 1, backoff_factor outside (0, 1), growth_interval < 1 and a
      non-finite (or non-positive) init_scale.
    scale(loss)         loss * scale (keep an fp16 loss from overflowing: multiply by an fp32 tensor)
    get_scale()         the current scale, a float
    unscale_(opt)       multiply opt's gradients by 1/scale in place; remember whether any is inf/NaN;
                        RuntimeError if called twice before update(); ValueError for fp16 gradients
    step(opt) -> bool   unscale_ first if it was not called; skip opt.step() if inf/NaN was found;
                        True if the optimizer stepped
    update()            overflow: scale *= backoff_factor and reset the growth counter; else count one
                        more consecutive finite step, and after growth_interval of them scale *=
                        growth_factor (unless that is inf in fp32) and reset the counter
    state_dict()        {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    load_state_dict(d)  resume from such a dict (ours or torch.amp.GradScaler's)
    """

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        raise NotImplementedError(f"Exercise 3.1: LossScaler.__init__ ({_NB}, 'Exercise 3.1: scale')")

    def get_scale(self) -> float:
        raise NotImplementedError(f"Exercise 3.1: LossScaler.get_scale ({_NB}, 'Exercise 3.1: scale')")

    def scale(self, loss):
        raise NotImplementedError(f"Exercise 3.1: LossScaler.scale ({_NB}, 'Exercise 3.1: scale')")

    def unscale_(self, optimizer):
        raise NotImplementedError(f"Exercise 3.2: LossScaler.unscale_ ({_NB}, 'Exercise 3.2: unscale_')")

    def step(self, optimizer) -> bool:
        raise NotImplementedError(f"Exercise 3.3: LossScaler.step ({_NB}, 'Exercise 3.3: step')")

    def update(self):
        raise NotImplementedError(f"Exercise 3.4: LossScaler.update ({_NB}, 'Exercise 3.4: update')")

    def state_dict(self) -> dict:
        raise NotImplementedError(f"Exercise 3.5: LossScaler.state_dict ({_NB}, 'Exercise 3.5: state_dict')")

    def load_state_dict(self, state_dict):
        raise NotImplementedError(f"Exercise 3.5: LossScaler.load_state_dict ({_NB}, 'Exercise 3.5: state_dict')")


def train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
               autocast_dtype=torch.float16):
    """One mixed-precision training step with a loss scaler; returns (loss as a float, stepped).

    Forward under torch.autocast(device type, dtype=autocast_dtype); backward of the scaled loss; if
    max_grad_norm is given, clip the gradients of the optimizer's parameters to it (the true gradients!);
    step (skipped on inf/NaN); update the scale; zero the gradients.
    """
    raise NotImplementedError(f"Exercise 3.6: train_step ({_NB}, 'Exercise 3.6: train_step')")

"""Chapter 3 exercises: a dynamic loss scaler from scratch (torch.amp.GradScaler's rules), a training step
that uses it, and stochastic rounding to bf16.

Fill in the methods below, then grade them, from notebooks/03_mixed_precision.ipynb:
    from efftrain_lib.grade import check; check("loss_scaling")
or from a terminal at the repository root:
    python -m efftrain_lib.grade loss_scaling
Keep the names and signatures: the graders call exactly these, and compare what they do with
torch.amp.GradScaler("cpu") and the library's training step. solutions/loss_scaling.py has answers (try first!).
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
    unscale_(opt)       multiply opt's gradients by 1/scale in place (parameters without a gradient are
                        skipped); remember whether any is inf/NaN; RuntimeError if called twice for the same
                        optimizer before update(); ValueError for fp16 gradients
    step(opt) -> bool   unscale_ first if it was not called for opt; skip opt.step() if opt's gradients held
                        inf/NaN (per optimizer: with two optimizers, an overflow in one skips that one
                        only); True if the optimizer stepped
    update()            once per iteration, after every step(): if any optimizer overflowed, scale *=
                        backoff_factor (once) and reset the growth counter; else count one more consecutive
                        finite step, and after growth_interval of them scale *= growth_factor (unless that
                        is inf in fp32) and reset the counter
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
               autocast_dtype=torch.float16, scheduler=None):
    """One mixed-precision training step; returns (loss as a float, stepped).

    Forward under torch.autocast(device type, dtype=autocast_dtype) (None: fp32, no autocast); backward of
    the loss, scaled by `scaler` (a LossScaler or a torch.amp.GradScaler; None: no scaling, fine for fp32
    and bf16); if max_grad_norm is given, clip the gradients of the optimizer's parameters to it (the true
    gradients!); step (skipped on inf/NaN); update the scale; then scheduler.step() if a scheduler is given
    (every iteration, also when the step was skipped); zero the gradients. `stepped` is a bool: whether the
    optimizer stepped (a GradScaler's step() returns None either way; its scale backs off exactly when it
    skipped). Every combination of these options must work.
    """
    raise NotImplementedError(f"Exercise 3.6: train_step ({_NB}, 'Exercise 3.6: train_step')")


def stochastic_round_to_bf16(x):
    """Round a float32 tensor to bf16 at random, without bias; return the bf16 tensor (same shape).

    Each value becomes one of the two bf16 values that bracket it: the one farther from zero with
    probability (distance from the nearer-to-zero one) / (the gap between them), so that on average the
    result is x itself, and every element draws its own chance. Exact bf16 values, +-0, +-inf and NaN come
    back unchanged; above bf16's largest finite value, the step away from zero is inf. Use torch's default
    random generator (so torch.manual_seed reproduces a result). TypeError for anything but a float32 tensor.
    """
    raise NotImplementedError(f"Exercise 3.7: stochastic_round_to_bf16 ({_NB}, 'Exercise 3.7: stochastic rounding')")

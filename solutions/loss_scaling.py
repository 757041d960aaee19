"""Chapter 3 reference solutions: a dynamic loss scaler from scratch, the step that uses it, and stochastic
rounding to bf16; the whiteboard version.

Short and commented, the way you would write it in an interview. The hardened version (argument checks
with reasons, sparse gradients, fp32 scale arithmetic, a training loop) lives in efftrain_lib/precision.py
(stochastic rounding in efftrain_lib/number_formats.py). Grade these with
    python -m efftrain_lib.grade loss_scaling --impl solutions
"""

import math

import torch


# Exercise 3.1: constructor, scale, get_scale ---------------------------------------------------
class LossScaler:
    """torch.amp.GradScaler's rules: scale the loss, unscale the gradients, skip steps on inf/NaN,
    back off on overflow, grow after growth_interval consecutive finite steps."""

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        # Refuse settings that break the feedback loop: a scale that cannot grow back, or cannot shrink.
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be finite and > 0, got {init_scale}")
        if not growth_factor > 1:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        if not (isinstance(growth_interval, int) and growth_interval >= 1):
            raise ValueError(f"growth_interval must be an integer >= 1, got {growth_interval}")
        self._scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self._growth_tracker = 0  # consecutive finite steps since the last overflow or growth
        # id(optimizer) -> whether its gradients held inf/NaN, for each optimizer unscaled since update().
        # Per optimizer, as GradScaler: an overflow in one optimizer's gradients skips that one only.
        self._found_inf = {}

    def get_scale(self) -> float:
        return self._scale

    def scale(self, loss):
        # An fp32 tensor, not a Python float: an fp16 loss * 65536 (a Python float) would stay fp16 and
        # overflow at 65504. By the chain rule every gradient comes out multiplied by the scale.
        return loss * torch.tensor(self._scale, dtype=torch.float32, device=loss.device)

    # Exercise 3.2: unscale_ ------------------------------------------------------------------------
    @torch.no_grad()
    def unscale_(self, optimizer):
        if id(optimizer) in self._found_inf:  # a second call would divide by the scale twice
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update()")
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if any(grad.dtype == torch.float16 for grad in grads):
            raise ValueError("Attempting to unscale FP16 gradients: keep fp32 master weights")
        # Check for inf/NaN first (max |g| is inf or NaN then), then multiply by 1/scale in place, with
        # the foreach ops: one call for all tensors instead of a Python loop. (On CPU the inf-norm is slow;
        # efftrain_lib/precision.py uses the L2 norm, NaN/inf exactly when max |g| is, and re-checks overflows.)
        found_inf = not bool(torch.stack(torch._foreach_norm(grads, math.inf)).isfinite().all())
        inv_scale = float(torch.tensor(1.0 / self._scale, dtype=torch.float32))  # 1/scale in fp64, then fp32
        torch._foreach_mul_(grads, inv_scale)
        self._found_inf[id(optimizer)] = found_inf

    # Exercise 3.3: step ----------------------------------------------------------------------------
    def step(self, optimizer) -> bool:
        if id(optimizer) not in self._found_inf:  # the caller did not unscale (no clipping): do it now
            self.unscale_(optimizer)
        if self._found_inf[id(optimizer)]:  # inf/NaN would poison the weights and Adam's moments: skip
            return False
        optimizer.step()
        return True

    # Exercise 3.4: update --------------------------------------------------------------------------
    def update(self):
        if not self._found_inf:
            raise RuntimeError("No inf checks were recorded prior to update(): call step() first")
        if any(self._found_inf.values()):  # one backoff per iteration, however many optimizers overflowed
            self._scale *= self.backoff_factor  # too big: back off...
            self._growth_tracker = 0  # ...and start counting clean steps again
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:  # growth_interval consecutive finite steps
                self._grow()
                self._growth_tracker = 0
        self._found_inf.clear()

    def _grow(self):
        grown = self._scale * self.growth_factor
        # Never grow to inf (every later step would overflow). GradScaler keeps its scale in fp32, so
        # "finite" means finite in fp32: 2**127 * 2 is inf there, though not as a Python float.
        if math.isfinite(float(torch.tensor(grown, dtype=torch.float32))):
            self._scale = grown

    # Exercise 3.5: state_dict, load_state_dict ----------------------------------------------------
    def state_dict(self) -> dict:
        # GradScaler's keys, so a checkpoint resumes with either scaler.
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict):
        self._scale = float(state_dict["scale"])
        self.growth_factor = float(state_dict["growth_factor"])
        self.backoff_factor = float(state_dict["backoff_factor"])
        self.growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])  # resume mid-interval, not from zero


# Exercise 3.6: one training step, with or without a scaler ------------------------------------------
def train_step(model, optimizer, scaler, inputs, targets, loss_fn, max_grad_norm=None,
               autocast_dtype=torch.float16, scheduler=None):
    """Forward under autocast, scaled backward, unscale_ -> clip -> step -> update, then the schedule.
    Returns (loss, stepped)."""
    device_type = next(model.parameters()).device.type
    if scaler is None:  # fp32 and bf16 need no scaling: a disabled GradScaler passes everything through
        scaler = torch.amp.GradScaler(device_type, enabled=False)
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients: scaled ones would be clipped S times harder
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    before = scaler.get_scale()
    stepped = scaler.step(optimizer)  # unscales if we did not, skips on inf/NaN
    scaler.update()
    if not isinstance(stepped, bool):  # GradScaler returns optimizer.step()'s None either way: a skip
        stepped = scaler.get_scale() >= before  # always backs the scale off, a step never does
    if scheduler is not None:
        scheduler.step()  # every iteration, skipped or not: the schedule counts iterations
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), stepped


# Exercise 3.7: stochastic rounding to bf16 -------------------------------------------------------------
def stochastic_round_to_bf16(x):
    """x (float32) -> bf16, up or down at random so that the expected result is x."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"expected a float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    # bf16 is fp32's top 16 bits. Cutting the low 16 off rounds toward zero; adding one unit of bit 16
    # steps one bf16 value away from zero. Step away with probability (low 16 bits) / 2^16: the distance
    # from the truncated value over the gap, so on average we land exactly on x.
    bits = x.view(torch.int32)
    low = bits & 0xFFFF
    truncated = bits - low
    draw = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)  # torch's default generator
    rounded = torch.where(draw < low, truncated + (1 << 16), truncated).view(torch.float32).bfloat16()
    return torch.where(x.isnan(), x.bfloat16(), rounded)  # a NaN's payload may sit in the low bits

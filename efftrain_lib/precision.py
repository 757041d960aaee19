"""Mixed precision, hardened: a dynamic loss scaler equal to torch.amp.GradScaler, the step that uses it
(`train_step`, Exercise 3.6's API on the library's one step), and which dtype autocast gives each op.
Exercise 3.7's `stochastic_round_to_bf16` lives with the formats (efftrain_lib/number_formats.py).

`LossScaler` follows torch.amp.GradScaler's semantics exactly (torch 2.13, `torch/amp/grad_scaler.py` and
the `_amp_update_scale_` kernel), so that a run with either gives the same scale trajectory, the same
skipped steps and bit-identical parameters (tests/test_precision.py proves it with injected overflows):

* `scale(loss)`   multiplies by the scale, held as an fp32 value (a 0-dim fp16 loss comes back fp32, as
                  with GradScaler: a Python-float product would stay fp16 and overflow at 65504);
* `unscale_(opt)` checks every gradient for inf/NaN, then multiplies by 1/scale (the reciprocal taken
                  in fp64, then rounded to fp32, as torch does); once per optimizer between updates;
* `step(opt)`     unscales if the caller did not, and skips `optimizer.step()` if inf/NaN was found;
                  returns True if the optimizer stepped;
* `update()`      on inf/NaN: scale *= backoff_factor and the growth tracker resets to 0; else the tracker
                  counts one more consecutive finite step, and when it reaches growth_interval the scale
                  grows by growth_factor (only if the result is finite in fp32) and the tracker resets;
* `state_dict()`  the keys of GradScaler's state_dict, so either can resume from the other.

The scaling policy (when to back off, when to grow, when to skip) is built by hand; the pass over the
gradients uses torch's fused foreach kernel `_amp_foreach_non_finite_check_and_unscale_` (one read of each
gradient finds inf/NaN and unscales it), falling back to the public `_foreach_norm` + `_foreach_mul_` where
a torch build lacks it. The notebook builds the plain version first. Unlike GradScaler it validates its
arguments (growth_factor > 1, backoff_factor in (0, 1), growth_interval >= 1, a finite positive
init_scale) and says why fp16
parameters cannot be unscaled. Defined in notebooks/03_mixed_precision.ipynb, section
"5. Build a loss scaler step by step".
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Iterable
from typing import Callable

import torch
import torch.nn as nn

# absolute imports: the graders load this file by path
from efftrain_lib.losses import language_model_loss
from efftrain_lib.number_formats import stochastic_round_to_bf16  # noqa: F401  (Exercise 3.7's API, re-exported)
from efftrain_lib.training import training_step

# Per-optimizer stages between two update() calls (GradScaler's OptState).
READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"

STATE_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def to_fp32(value: float) -> float:
    """`value` rounded to the nearest fp32 (inf beyond fp32's range), as a Python float.

    GradScaler keeps its scale in an fp32 tensor: its products and its "is the grown scale finite?"
    test happen in fp32, so ours must too (fp64 would grow past 3.4e38 where fp32 gives inf).
    """
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def _check_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _check_growth_factor(value) -> float:
    value = _check_number("growth_factor", value)
    if not (math.isfinite(value) and value > 1.0):
        raise ValueError(f"growth_factor must be > 1 (the scale has to grow back after a backoff), got {value!r}")
    return value


def _check_backoff_factor(value) -> float:
    value = _check_number("backoff_factor", value)
    if not (0.0 < value < 1.0):
        raise ValueError(f"backoff_factor must be in (0, 1) (an overflow has to lower the scale), got {value!r}")
    return value


def _check_growth_interval(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"growth_interval must be an integer >= 1, got {value!r}")
    return value


def _check_scale(name: str, value) -> float:
    """A finite positive number (or, as GradScaler.update accepts, a 1-element float tensor), as an fp32 value."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point() or value.requires_grad:
            raise ValueError(f"{name} must be a number or a 1-element floating-point tensor with requires_grad=False, "
                             f"got a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.item()
    value = _check_number(name, value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not math.isfinite(to_fp32(value)) or to_fp32(value) == 0:
        raise ValueError(f"{name} {value!r} is not representable in fp32 (the scale is kept in fp32)")
    return to_fp32(value)


def _check_device(device) -> str | None:
    """GradScaler's first argument: a device type ("cuda", "cpu", ...); None: wherever the gradients are."""
    if device is None:
        return None
    if isinstance(device, (int, float)) and not isinstance(device, bool):
        raise TypeError(f"LossScaler's first argument is the device, as torch.amp.GradScaler's (\"cuda\", \"cpu\"), "
                        f"got the number {device!r}: pass init_scale={device!r} by keyword")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a device type such as \"cuda\" or \"cpu\", got {type(device).__name__}")
    try:
        return torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"device must be a device type such as \"cuda\" or \"cpu\", got {device!r} ({error})") from None


def _underflow_message(steps: int, scale: float, backoff_factor: float) -> str:
    return (
        f"the loss scale underflowed to 0 after {steps} consecutive steps with inf/NaN gradients (each backoff "
        f"multiplied it by {backoff_factor:g}, down to {scale:g}; one more gives 0 in fp32, and unscaling would "
        "divide by 0). Gradients that stay inf/NaN at every scale mean the loss itself (or the model's output or "
        "weights) is NaN/inf: loss scaling cannot fix that. Check torch.isfinite(loss) before backward, and find "
        "where the NaN/inf comes from (torch.autograd.detect_anomaly() names the operation)."
    )


def _any_non_finite(grads: list[torch.Tensor]) -> bool:
    """Is any element of `grads` inf or NaN? Checked before unscaling, as torch's kernel does (with a scale
    below 1, a finite gradient times 1/scale may overflow; GradScaler does not count that either).

    One fused L2 norm per tensor: NaN if the tensor holds a NaN, inf if it holds an inf, so a finite norm
    proves the tensor finite. A norm can also overflow for finite values (|g| > ~1e19 in fp32): those few
    tensors are re-checked exactly. (torch._foreach_norm with ord=inf would be exact at once, but on CPU it
    takes a slow path: ~100x the time of ord=2, measured by benchmarks/loss_scaling.py's predecessor.)
    """
    norms = torch._foreach_norm(grads, 2)
    if math.isfinite(torch.stack(norms).sum().item()):  # one sync; a sum that overflows is re-checked below
        return False
    return any(not bool(torch.isfinite(g).all()) for g, n in zip(grads, norms) if not bool(torch.isfinite(n)))


def _check_and_unscale(grads: list[torch.Tensor], inv_scale: float, device: torch.device) -> bool:
    """Multiply `grads` by inv_scale in place; return whether any held inf/NaN before the multiply.

    torch ships this pass as one fused foreach kernel (the one GradScaler calls): one read of every
    gradient for both jobs. Where a torch build lacks it, two public foreach passes do the same.
    """
    fused = getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)
    if fused is None:
        found = _any_non_finite(grads)
        torch._foreach_mul_(grads, inv_scale)
        return found
    found_inf = torch.zeros(1, dtype=torch.float32, device=device)
    fused(grads, found_inf, torch.full((1,), inv_scale, dtype=torch.float32, device=device))
    return bool(found_inf.item())


class LossScaler:
    """Dynamic loss scaling for fp16 mixed precision: torch.amp.GradScaler's rules, built by hand.

        scaler = LossScaler()
        with torch.autocast("cpu", dtype=torch.float16):       # or "cuda"
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)                              # optional: only to clip or inspect
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # sees the true gradients
        stepped = scaler.step(optimizer)                        # False: inf/NaN found, step skipped
        scaler.update()
        optimizer.zero_grad()

    enabled=False turns every method into a pass-through (scale(loss) returns loss, step() always steps),
    so one training loop serves fp32, bf16 and fp16.

    GradScaler's whole public interface, so code written for it runs on this one (tests/test_precision.py
    compares the names and signatures): the constructor's arguments in GradScaler's order (device first:
    `LossScaler("cuda", init_scale=1024.0)`; device=None, the default, means wherever the gradients are,
    and "cuda" without CUDA warns and disables the scaler, as GradScaler does), scale, unscale_, step,
    update (new_scale may be a number or a 1-element tensor), get_scale, is_enabled,
    get_/set_growth_factor, get_/set_backoff_factor, get_/set_growth_interval, state_dict,
    load_state_dict (a no-op on a disabled scaler, as GradScaler). Where it differs, it says why:

    * arguments and setters are validated (GradScaler asserts only growth_factor > 1 and
      backoff_factor < 1, and not in its setters);
    * step() returns True if the optimizer stepped, False if it skipped (GradScaler returns
      optimizer.step()'s value, or None when it skipped);
    * set_growth_interval below the count of consecutive finite steps restarts the count at 0
      (GradScaler's kernel compares the count with == growth_interval, so its scale would never grow
      again until an overflow resets the count);
    * a loss that is NaN/inf at every step: each step backs the scale off, and from the defaults the 166th
      consecutive non-finite step would take it to 0 in fp32. This scaler then raises a RuntimeError
      that names the cause (the loss itself is NaN/inf; scaling cannot fix it). torch.amp.GradScaler
      (torch 2.13, measured in tests/test_precision.py) raises nothing: its scale stays 0 for good
      (growing 0 gives 0), every step unscales by 1/0 = inf; while the loss stays NaN every step is
      skipped silently, and once the loss is finite again its zero gradients times inf are NaN, which
      its inf/NaN check (made before unscaling) does not see: the optimizer steps, and the weights
      become NaN.
    """

    def __init__(self, device: str | torch.device | None = None, init_scale: float = 2.0**16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True):
        self.device = _check_device(device)
        self._scale = _check_scale("init_scale", _check_number("init_scale", init_scale))
        self.growth_factor = _check_growth_factor(growth_factor)
        self.backoff_factor = _check_backoff_factor(backoff_factor)
        self.growth_interval = _check_growth_interval(growth_interval)
        self.enabled = bool(enabled)
        if self.enabled and self.device == "cuda" and not torch.cuda.is_available():
            warnings.warn("LossScaler is enabled, but CUDA is not available.  Disabling. (as torch.amp.GradScaler"
                          "(\"cuda\") does; pass device=\"cpu\" or None to scale on the CPU)", stacklevel=2)
            self.enabled = False
        self._growth_tracker = 0
        self._nonfinite_steps = 0  # consecutive updates that found inf/NaN: names an underflow's cause
        self._per_optimizer: dict[int, dict] = {}
        self._scale_tensors: dict[torch.device, tuple[float, torch.Tensor]] = {}

    # -- GradScaler's getters and setters ---------------------------------------------------------

    def is_enabled(self) -> bool:
        return self.enabled

    def get_growth_factor(self) -> float:
        return self.growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self.growth_factor = _check_growth_factor(new_factor)

    def get_backoff_factor(self) -> float:
        return self.backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self.backoff_factor = _check_backoff_factor(new_factor)

    def get_growth_interval(self) -> int:
        return self.growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self.growth_interval = _check_growth_interval(new_interval)
        if self._growth_tracker >= self.growth_interval:
            self._growth_tracker = 0  # the count could never equal the interval again

    # -- reading ----------------------------------------------------------------------------------

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled, as GradScaler)."""
        return self._scale if self.enabled else 1.0

    @property
    def growth_tracker(self) -> int:
        """Consecutive finite steps since the last overflow or growth."""
        return self._growth_tracker

    def __repr__(self) -> str:
        return (f"LossScaler(scale={self._scale:g}, growth_factor={self.growth_factor:g}, backoff_factor="
                f"{self.backoff_factor:g}, growth_interval={self.growth_interval}, "
                f"growth_tracker={self._growth_tracker}, enabled={self.enabled})")

    # -- scale ------------------------------------------------------------------------------------

    def _scale_on(self, device: torch.device) -> torch.Tensor:
        # One fp32 tensor per device, remade only when the scale changed (no device sync to compare).
        value, tensor = self._scale_tensors.get(device, (None, None))
        if value != self._scale:
            tensor = torch.tensor(self._scale, dtype=torch.float32, device=device)
            self._scale_tensors[device] = (self._scale, tensor)
        return tensor

    def scale(self, outputs):
        """outputs * scale: a tensor, or a (nested) list/tuple of tensors (another iterable: a lazy map, as
        GradScaler returns)."""
        if not self.enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            return outputs * self._scale_on(outputs.device)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if isinstance(outputs, Iterable) and not isinstance(outputs, (str, bytes, dict)):
            return map(self.scale, outputs)
        raise ValueError(f"scale() takes a tensor or a list/tuple of tensors, got {type(outputs).__name__}")

    # -- unscale_ ---------------------------------------------------------------------------------

    def _state(self, optimizer) -> dict:
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "step"):
            raise ValueError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        return self._per_optimizer.setdefault(id(optimizer), {"stage": READY, "found_inf": None})

    def unscale_(self, optimizer) -> None:
        """Divide the optimizer's gradients by the scale, in place, and record whether any is inf/NaN.

        Call it before anything that must see true gradients (clip_grad_norm_). Once per optimizer
        between two update() calls: a second call would divide twice.
        """
        if not self.enabled:
            return
        state = self._state(optimizer)
        if state["stage"] == UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update(): "
                               "a second call would divide the gradients by the scale twice")
        if state["stage"] == STEPPED:
            raise RuntimeError("unscale_() is being called after step(): call it before step(), then update()")
        groups: dict[tuple, list[torch.Tensor]] = {}
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.requires_grad and param.dtype == torch.float16:
                    raise ValueError(
                        "Attempting to unscale FP16 gradients: the optimizer holds fp16 parameters. Keep fp32 "
                        "master weights (model.float()) and let autocast compute in fp16: an fp16 update "
                        "lr * grad rounds away next to the weight, and fp16 gradients overflow before unscaling.")
                grad = param.grad
                if grad is None:
                    continue
                if grad.dtype == torch.float16:
                    raise ValueError("Attempting to unscale FP16 gradients: gradients must be fp32 "
                                     "(fp32 master weights, fp16 only inside autocast)")
                if grad.is_sparse:
                    grad = grad.coalesce()
                    param.grad = grad
                    grad = grad._values()
                groups.setdefault((grad.device, grad.dtype), []).append(grad)
        if not groups:
            raise RuntimeError("unscale_() found no gradients in this optimizer: call "
                               "scaler.scale(loss).backward() first")
        # The reciprocal in fp64, then fp32, like GradScaler (an fp32 division can be inexact).
        inv_scale = to_fp32(1.0 / self._scale)
        found_inf = False
        for (device, _), grads in groups.items():
            found_inf |= _check_and_unscale(grads, inv_scale, device)
        state["found_inf"] = found_inf
        state["stage"] = UNSCALED

    # -- step -------------------------------------------------------------------------------------

    def step(self, optimizer, *args, **kwargs) -> bool:
        """optimizer.step(), unless a gradient is inf/NaN. Unscales first if unscale_ was not called.

        Returns True if the optimizer stepped (GradScaler returns step()'s return value instead).
        """
        if not self.enabled:
            optimizer.step(*args, **kwargs)
            return True
        if "closure" in kwargs:
            raise ValueError("closure is not supported: a closure would recompute the loss unscaled")
        state = self._state(optimizer)
        if state["stage"] == STEPPED:
            raise RuntimeError("step() has already been called since the last update()")
        if state["stage"] == READY:
            self.unscale_(optimizer)
        state["stage"] = STEPPED
        if state["found_inf"]:
            return False
        optimizer.step(*args, **kwargs)
        return True

    # -- update -----------------------------------------------------------------------------------

    def update(self, new_scale: float | None = None) -> None:
        """Adjust the scale after a step (see the module docstring), or set it to `new_scale`."""
        if not self.enabled:
            return
        if new_scale is not None:
            self._scale = _check_scale("new_scale", new_scale)
        else:
            found = [s["found_inf"] for s in self._per_optimizer.values() if s["found_inf"] is not None]
            if not found:
                raise RuntimeError("No inf checks were recorded prior to update(): call step(optimizer) "
                                   "(or unscale_) first")
            if any(found):
                self._nonfinite_steps += 1
                backed_off = to_fp32(self._scale * self.backoff_factor)
                if backed_off == 0.0:  # GradScaler goes on at 0 (see the class docstring): say why instead
                    self._per_optimizer.clear()
                    raise RuntimeError(_underflow_message(self._nonfinite_steps, self._scale, self.backoff_factor))
                self._scale = backed_off
                self._growth_tracker = 0
            else:
                self._nonfinite_steps = 0
                self._growth_tracker += 1  # one more *consecutive* finite step
                if self._growth_tracker == self.growth_interval:
                    grown = to_fp32(self._scale * self.growth_factor)
                    if math.isfinite(grown):  # never grow to inf: every later step would overflow
                        self._scale = grown
                    self._growth_tracker = 0
        self._per_optimizer.clear()

    # -- resuming ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """GradScaler's keys: scale, growth_factor, backoff_factor, growth_interval, _growth_tracker."""
        if not self.enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume from our state_dict() or from torch.amp.GradScaler's (a no-op when disabled, as GradScaler)."""
        if not self.enabled:
            return
        if not isinstance(state_dict, dict) or not state_dict:
            raise ValueError("the state_dict is empty: was it saved from a disabled scaler?")
        missing = [k for k in STATE_KEYS if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing}; expected the keys {list(STATE_KEYS)}")
        tracker = state_dict["_growth_tracker"]
        tracker = int(tracker.item() if isinstance(tracker, torch.Tensor) else tracker)
        scale = state_dict["scale"]
        scale = float(scale.item() if isinstance(scale, torch.Tensor) else scale)
        checked = LossScaler(init_scale=scale, growth_factor=state_dict["growth_factor"],
                             backoff_factor=state_dict["backoff_factor"],
                             growth_interval=state_dict["growth_interval"])  # validates every value
        if not 0 <= tracker < checked.growth_interval:
            raise ValueError(f"_growth_tracker {tracker} is outside [0, growth_interval={checked.growth_interval})")
        self._scale = checked._scale
        self.growth_factor, self.backoff_factor = checked.growth_factor, checked.backoff_factor
        self.growth_interval = checked.growth_interval
        self._growth_tracker = tracker
        self._nonfinite_steps = 0
        self._per_optimizer.clear()


# ----------------------------------------------------------------------------------------------
# One step with a scaler
# ----------------------------------------------------------------------------------------------


def train_step(model: nn.Module, optimizer, scaler, inputs: torch.Tensor, targets: torch.Tensor,
               loss_fn: Callable = language_model_loss, max_grad_norm: float | None = None,
               autocast_dtype: torch.dtype | None = torch.float16, scheduler=None, meter=None) -> tuple[float, bool]:
    """One training step; returns (loss, stepped). Exercise 3.6's API, on the library's one step
    (`training.training_step`, which `training.train` loops).

    autocast_dtype: torch.float16, torch.bfloat16, or None (fp32, no autocast).
    scaler: a LossScaler, a torch.amp.GradScaler, or None (no scaling: fp32 and bf16). With a scaler:
    scale(loss).backward(); unscale_ (only when clipping, so the clip sees true gradients); clip; step
    (skipped on inf/NaN); update. scheduler: stepped once, after the optimizer step (also when the scaler
    skipped it: a schedule counts iterations, as in torch's AMP recipe). meter: a MemoryMeter recording the step.
    """
    return tuple(training_step(model, optimizer, [(inputs, targets)], loss_fn=loss_fn, autocast_dtype=autocast_dtype,
                               scaler=scaler, max_grad_norm=max_grad_norm, scheduler=scheduler, meter=meter))


# ----------------------------------------------------------------------------------------------
# Which dtype does autocast pick?
# ----------------------------------------------------------------------------------------------


def _ops(x: torch.Tensor, w: torch.Tensor, target: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    import torch.nn.functional as F

    q = x.view(2, 2, 8, 16)
    return {
        "linear": lambda: F.linear(x, w),
        "matmul": lambda: x @ w.t(),
        "bmm": lambda: torch.bmm(q.flatten(0, 1), q.flatten(0, 1).transpose(1, 2)),
        "scaled_dot_product_attention": lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True),
        "softmax": lambda: torch.softmax(x, -1),
        "log_softmax": lambda: torch.log_softmax(x, -1),
        "layer_norm": lambda: F.layer_norm(x, (16,)),
        "gelu": lambda: F.gelu(x),
        "silu": lambda: F.silu(x),
        "sum": lambda: x.sum(),
        "exp": lambda: x.exp(),
        "add": lambda: x + x,
        "cross_entropy": lambda: F.cross_entropy(x, target),
        "mse_loss": lambda: F.mse_loss(x, x.detach() + 1),
    }


def autocast_op_dtypes(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                       input_dtype: torch.dtype = torch.float32) -> dict[str, torch.dtype]:
    """Run common ops under torch.autocast(device, dtype) on `input_dtype` inputs; the output dtype of each.

    Measured, not looked up: the lists differ between CPU and CUDA and between torch versions.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch.cuda.is_available() is False")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=generator).to(device=device, dtype=input_dtype)
    w = torch.randn(16, 16, generator=generator).to(device=device, dtype=input_dtype)
    target = torch.randint(0, 16, (32,), generator=generator).to(device)
    out = {}
    with torch.autocast(device.type, dtype=dtype):
        for name, op in _ops(x, w, target).items():
            out[name] = op().dtype
    return out

"""Mistake: every positional argument goes through apply and save_for_backward, as in the seed notes'
manual version. A non-tensor argument (a scale, a flag) cannot be saved; keyword arguments are refused."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "keyword and non-tensor arguments": ["save_for_backward"],
}


class CheckpointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, *args):
        ctx.fn = fn
        ctx.rng = torch.get_rng_state()
        ctx.save_for_backward(*args)  # BUG: args may hold ints, strings, None
        with torch.no_grad():
            return fn(*args)

    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.rng)
            with torch.enable_grad():
                outputs = ctx.fn(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if torch.is_tensor(o) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None,) + tuple(t.grad if t.requires_grad else None for t in inputs)


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    if kwargs:
        raise TypeError(f"checkpoint() got an unexpected keyword argument {next(iter(kwargs))!r}")
    return CheckpointFunction.apply(fn, *args)


_solution.checkpoint = checkpoint
checkpoint_sequential = _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

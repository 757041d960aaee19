"""Mistake: only the first output is recomputed-and-back-propagated; a second output's gradient is dropped."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "several outputs": ["only the first output"],
}


class CheckpointFunction(_solution.CheckpointFunction):
    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.cpu_rng)
            with torch.enable_grad(), _solution._Autocast(ctx.autocast):
                outputs = ctx.run(*inputs)
        first = outputs[0] if isinstance(outputs, tuple) else outputs
        torch.autograd.backward(first, grad_outputs[0])  # BUG: the other outputs' gradients are ignored
        return (None, None, None) + tuple(t.grad if t.requires_grad else None for t in inputs)


_solution.CheckpointFunction = CheckpointFunction
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

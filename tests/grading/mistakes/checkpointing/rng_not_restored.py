"""Mistake: the RNG state is not restored before the recompute (the seed notes' manual version).

Dropout draws a new mask in backward: the forward output is right, the gradients are wrong, silently.
"""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "dropout: same mask in the recompute (RNG state restored)": ["RNG not restored", "same forward", "get_rng_state"],
    "output and gradients equal torch's checkpoint_sequential": ["gradients"],
}


class CheckpointFunction(_solution.CheckpointFunction):
    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad(), _solution._Autocast(ctx.autocast):
            outputs = ctx.run(*inputs)  # BUG: no torch.set_rng_state(ctx.cpu_rng) first
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if torch.is_tensor(o) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, None, None) + tuple(t.grad if t.requires_grad else None for t in inputs)


_solution.CheckpointFunction = CheckpointFunction
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

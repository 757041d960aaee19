"""Mistake: the forward runs fn with grad enabled and keeps its outputs on ctx, "so that backward need not
recompute". The gradients are right, but the whole graph stays in memory: nothing is saved."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "forward keeps only the inputs": ["keeps its graph anyway", "torch.no_grad()"],
}


class CheckpointFunction(_solution.CheckpointFunction):
    @staticmethod
    def forward(ctx, run, preserve_rng_state, anchor, *tensors):
        ctx.inputs = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
        with torch.enable_grad():  # BUG: builds and keeps the graph
            ctx.outputs = run(*ctx.inputs)
        outputs = ctx.outputs if isinstance(ctx.outputs, tuple) else (ctx.outputs,)
        detached = tuple(o.detach() if torch.is_tensor(o) else o for o in outputs)
        return detached if isinstance(ctx.outputs, tuple) else detached[0]

    @staticmethod
    def backward(ctx, *grad_outputs):
        outputs = ctx.outputs if isinstance(ctx.outputs, tuple) else (ctx.outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if torch.is_tensor(o) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, None, None) + tuple(t.grad if t.requires_grad else None for t in ctx.inputs)


_solution.CheckpointFunction = CheckpointFunction
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

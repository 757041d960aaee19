"""Mistake: the inputs are kept as ctx.inputs instead of with ctx.save_for_backward. Autograd neither frees
them after backward nor refuses a second backward, which then silently adds the gradients again."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "backward twice raises a clear error": ["save_for_backward"],
}


class CheckpointFunction(_solution.CheckpointFunction):
    @staticmethod
    def forward(ctx, run, preserve_rng_state, anchor, *tensors):
        ctx.run = run
        ctx.cpu_rng = torch.get_rng_state()
        ctx.autocast = _solution._autocast_state()
        ctx.inputs = tensors  # BUG: not ctx.save_for_backward(*tensors)
        with torch.no_grad():
            return run(*tensors)

    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.inputs]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.cpu_rng)
            with torch.enable_grad(), _solution._Autocast(ctx.autocast):
                outputs = ctx.run(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if torch.is_tensor(o) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, None, None) + tuple(t.grad if t.requires_grad else None for t in inputs)


_solution.CheckpointFunction = CheckpointFunction
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

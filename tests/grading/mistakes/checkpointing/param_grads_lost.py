"""Mistake: backward uses torch.autograd.grad(outputs, inputs) to get the inputs' gradients. It returns
only those: the parameters inside fn never get .grad."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "parameters inside fn receive gradients": ["parameter gradients lost", "torch.autograd.backward"],
}


class CheckpointFunction(_solution.CheckpointFunction):
    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.cpu_rng)
            with torch.enable_grad(), _solution._Autocast(ctx.autocast):
                outputs = ctx.run(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if torch.is_tensor(o) and o.requires_grad and g is not None]
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
        # BUG: autograd.grad returns the gradients of `wanted` only; parameters get nothing
        return (None, None, None) + tuple(next(grads) if t.requires_grad else None for t in inputs)


_solution.CheckpointFunction = CheckpointFunction
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

"""Mistake (the seed notes' manual version): every saved input is made to require grad in the recompute,
`inp.detach().requires_grad_(True)`. Integer inputs such as token ids cannot require grad."""

from pathlib import Path

import torch

from efftrain_lib.grade import load_module

_solution = load_module(Path(__file__).resolve().parents[4] / "solutions" / "checkpointing.py")

CAUGHT_BY = {
    "integer inputs (token ids) stay as they are": ["seed notes", "token ids"],
}


class CheckpointFunction(_solution.CheckpointFunction):
    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]  # BUG: True for every input
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.cpu_rng)
            with torch.enable_grad(), _solution._Autocast(ctx.autocast):
                outputs = ctx.run(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if torch.is_tensor(o) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, None, None) + tuple(t.grad for t in inputs)


_solution.CheckpointFunction = CheckpointFunction
checkpoint, checkpoint_sequential = _solution.checkpoint, _solution.checkpoint_sequential
checkpoint_non_reentrant = _solution.checkpoint_non_reentrant

"""Chapter 2 exercises: gradient checkpointing from scratch.

Fill in the functions below, then grade them, from notebooks/02_gradient_checkpointing.ipynb:
    from efftrain_lib.grade import check; check("checkpointing")
or from a terminal at the repository root:
    python -m efftrain_lib.grade checkpointing
Keep the names and signatures: the graders call exactly these, and compare against
torch.utils.checkpoint (use_reentrant=False). solutions/checkpointing.py has answers (try first!).
"""

import torch  # noqa: F401
import torch.nn as nn  # noqa: F401


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    """Return what fn(*args, **kwargs) returns, with the same gradients as running fn directly,
    but keep only the inputs for backward: run fn without a graph now, run it again in backward.

    Build it as a torch.autograd.Function, step by step (notebook section 2):
      - forward: run fn under torch.no_grad(); save only the tensor inputs (ctx.save_for_backward);
      - backward: recompute with grad enabled on detached copies of the inputs, then
        torch.autograd.backward(outputs, grad_outputs); return the inputs' gradients;
      - parameters inside fn must receive gradients; so must tensors passed as keyword arguments;
      - non-tensor arguments (ints, strings, None) pass through; inputs that do not require grad
        (token ids, a frozen embedding's output) stay as they are, and the parameters inside fn
        still get their gradients even when no input requires grad;
      - fn may return a tuple: several outputs, of which the loss may use only some;
      - preserve_rng_state=True: dropout inside fn draws the same mask in the recompute, and the
        caller's RNG stream is left as it was; the autocast state is replayed too;
      - clear errors: a non-callable fn raises TypeError naming fn; backward twice through one
        checkpoint raises RuntimeError.
    """
    raise NotImplementedError(
        "Exercise 2.1: checkpoint (see notebooks/02_gradient_checkpointing.ipynb, 'Exercise 2.1: checkpoint')"
    )


def checkpoint_sequential(functions, segments, input):
    """Run `functions` (an nn.Sequential or a list of callables) in order on `input`, in `segments`
    chunks, the way torch.utils.checkpoint.checkpoint_sequential does: the first segments-1 chunks
    of len(functions) // segments functions each are checkpointed with your checkpoint(); the last
    chunk (it takes the remainder) runs normally. segments < 1 or more than len(functions) raises
    ValueError naming segments.
    """
    raise NotImplementedError(
        "Exercise 2.2: checkpoint_sequential (see notebooks/02_gradient_checkpointing.ipynb, "
        "'Exercise 2.2: checkpoint_sequential')"
    )


def checkpoint_non_reentrant(fn, *args, preserve_rng_state=True, **kwargs):
    """The same contract as checkpoint(), built the other way, as torch's use_reentrant=False is: no
    autograd.Function and no nested backward. Run fn normally, with grad enabled, so its graph is recorded,
    inside torch.autograd.graph.saved_tensors_hooks(pack, unpack):
      - pack(tensor) is called for every tensor fn's ops save for backward: keep something small instead of
        the tensor (the tensor is then freed after the forward);
      - unpack(what pack returned) is called in backward when a node needs its saved tensor: the first call
        recomputes fn (with grad enabled, the forward's RNG state and autocast state, on inputs whose
        requires_grad is as it was) under hooks of its own that collect what the recompute saves; return
        the one that stands where the tensor being unpacked stood.
    The notebook does not show this design (section 4 names it): the grader compares it with
    torch.utils.checkpoint(use_reentrant=False), asks torch.autograd.grad for the parameters inside fn, uses
    an input that does not require grad (no anchor needed here), checks that a hook on a parameter used
    inside and outside fn fires once, and reads what the forward keeps from the CPU allocator.
    """
    raise NotImplementedError(
        "Exercise 2.3: checkpoint_non_reentrant (see notebooks/02_gradient_checkpointing.ipynb, "
        "'Exercise 2.3: checkpointing with saved-tensor hooks')"
    )

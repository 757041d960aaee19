"""Graders for Chapter 5 (data parallelism and ZeRO-1): exercises 5.1-5.5 in <impl>/distributed.py.

The exercise API runs inside a process group, so the checks do too: the first check starts two ranks (a
gloo group on 127.0.0.1: the checking process's efftrain_lib.launcher.shared_group, which a notebook's own
runs share), and every check runs its part in both ranks, which load the graded file by path, and brings
the results back. A rank that raises sends its exception here (a stub's NotImplementedError is reported
as a stub); a rank that hangs or dies is stopped after RANK_TIMEOUT_S, reported as a failure, and the
ranks are restarted in the background for the next check. The ranks belong to the process that started
them: a grading child forked from it starts its own on its first check.

What each rank runs, and how it watches the learner's collectives (an asynchronous all-reduce lands
only at wait(), so a missing wait() is caught every time), is in efftrain_lib/grading/distributed_ranks.py.

References, computed in the rank: one process on the concatenated batch (the ranks' rows together),
torch.optim.AdamW on the mean gradient, the token mean over every rank's labelled tokens.
Tolerances (float32; sums over ranks in another order differ by ~1e-7): |got - ref| <= 1e-5 + 1e-4 * max|ref|.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from efftrain_lib.comparing import max_abs_diff
from efftrain_lib.grading import Checks, Outcome, distributed_ranks as ranks, failed, passed
from efftrain_lib.launcher import WorkerError, lost_peer, shared_group

EXERCISES = {
    "5.1": "broadcast_parameters: every rank starts from rank src's weights",
    "5.2": "all_reduce_gradients: the mean gradient over ranks",
    "5.3": "OverlappedDDP: all-reduce while backward runs, per parameter or in buckets, no_sync",
    "5.4": "global_token_mean_loss: the token mean over every rank's tokens",
    "5.5": "ShardedOptimizer: ZeRO stage 1",
}
CHECKS = Checks()

WORLD = ranks.WORLD
RANK_TIMEOUT_S = 5.0  # a check's part takes ~0.1 s; past this a rank is taken to hang
ATOL, RTOL = 1e-5, 1e-4
ONE_PROCESS = "one process on the concatenated batch"

# No prepare(): it would run in the grading server, whose forked workers cannot use ranks it started (a
# forked process gets its own shared group). The first check of a grade starts the ranks, in the process
# that runs the checks, and efftrain_lib.launcher.shared_group keeps them for the grade's later checks.


_SAME_CALLS = ("every rank must make the same collective calls in the same order (a collective one rank skips "
               "waits forever, or fails once the other rank is done), with tensors of the same size on every rank")


def _in_ranks(part, impl, *args):
    """part(path of the graded file, *args) in every rank: [rank 0's result, rank 1's]; or a failed
    Outcome when a rank hung, died, or lost the partner of a collective (the ranks are then restarted in
    the background when they had to be stopped)."""
    group = shared_group(WORLD, "gloo")
    try:
        return group.run(part, impl.__file__, *args, timeout_s=RANK_TIMEOUT_S)
    except WorkerError as error:  # WorkerTimeout too: the group has been stopped
        group.start(wait=False)  # the next check finds the ranks (nearly) ready
        return failed(str(error), f"a rank hung or died: {_SAME_CALLS}")
    except RuntimeError as error:
        if isinstance(error, NotImplementedError) or not lost_peer(error):
            raise
        return failed(f"a rank's collective lost its partner: {str(error)[:160]}",
                      f"one rank made a collective call the other did not: {_SAME_CALLS}")


# ---------------------------------------------------------------------------- parent helpers --
def _close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    return got.shape == ref.shape and bool(torch.isfinite(got).all()) and \
        (got - ref).abs().max().item() <= ATOL + RTOL * ref.abs().max().item()


def _ratio(got, ref):
    c = (torch.dot(got, ref) / torch.dot(ref, ref)).item()
    if (got - c * ref).abs().max().item() <= 1e-4 * max(ref.abs().max().item() * abs(c), 1e-12):
        return c
    return None


def _not_averaged_hint(result: dict) -> str:
    """Why .grad is not the mean, from what the rank saw: the local gradients, a sum, un-awaited handles."""
    got, mean, local = result["got"], result["mean"], result["local"]
    if result.get("pending", 0):
        return (f"{result['pending']} asynchronous all-reduce(s) were never waited on: call wait() on every "
                "handle before reading its result (an async collective's tensor is undefined until then)")
    c = _ratio(got, mean)
    if c is not None and abs(c - WORLD) < 1e-3:
        return f"sum instead of mean: the gradients are {WORLD} x the mean; divide the all-reduced sum by the world size"
    if _close(got, local):
        return ("the .grad values are this rank's own, not the mean: the reduced tensors never reached .grad. "
                "Read .grad in a post-accumulate-grad hook (register_post_accumulate_grad_hook): a tensor hook "
                "(register_hook) sees the gradient before it is accumulated into .grad")
    return "every .grad must end as the mean of the ranks' .grad (all-reduce SUM, then divide by the world size)"


# ----------------------------------------------------------------- Exercise 5.1: broadcast --
@CHECKS.add("5.1", "every rank ends with rank src's parameters and buffers",
            hint="dist.broadcast(tensor, src=src) on every parameter and every buffer, in place")
def broadcast_copies_src(impl):
    for src in (1, 0):
        results = _in_ranks(ranks.broadcast, impl, src)
        if isinstance(results, Outcome):
            return results
        want_params, want_buffers = results[src][0]
        originals = [before[0] for before, _ in results]
        for rank, (_, (params, buffers)) in enumerate(results):
            if not torch.equal(params, want_params):
                finals = [after[0] for _, after in results]
                holders = {r for final in finals for r in range(WORLD) if torch.equal(final, originals[r])}
                hint = (f"broadcast from the wrong rank: the ranks hold rank {min(holders)}'s weights, not rank "
                        f"{src}'s; pass src to dist.broadcast" if len(holders) == 1 and src not in holders else
                        "the parameters did not change: broadcast writes into the tensor you pass (p or p.data), "
                        "not into a copy")
                return failed(f"src={src}: rank {rank}'s parameters differ from rank {src}'s "
                              f"(max |diff| {max_abs_diff(params, want_params):.2e})", hint)
            if not torch.equal(buffers, want_buffers):
                return failed(f"src={src}: rank {rank}'s buffers differ from rank {src}'s",
                              "buffers not broadcast: buffers (running statistics, masks) are model state too; "
                              "broadcast module.buffers() as well")
    return passed("src=1 and src=0: parameters and buffers equal rank src's on every rank")


@CHECKS.add("5.1", "ranks with different shapes: ValueError, not a silent broadcast",
            hint="compare the parameters' shapes across ranks first (dist.all_gather_object) and raise ValueError")
def broadcast_checks_shapes(impl):
    results = _in_ranks(ranks.different_shapes, impl)
    if isinstance(results, Outcome):
        return results
    quiet = [rank for rank, (kind, _) in enumerate(results) if kind != "ValueError"]
    if quiet:
        return failed(f"rank(s) {quiet}: no error for a model whose shapes differ across ranks",
                      "shapes unchecked: gloo broadcasts tensors of different sizes silently (and an all-reduce of "
                      "them aborts the process): gather every rank's shapes first and raise ValueError on a mismatch")
    return passed("ValueError on every rank: " + results[0][1][:80])


@CHECKS.add("5.1", "outside a process group: RuntimeError",
            hint="check torch.distributed.is_initialized() first and raise RuntimeError saying what is missing")
def outside_a_group(impl):
    if dist.is_initialized():
        return passed("skipped: this process is inside a process group")
    try:
        impl.broadcast_parameters(ranks.make_net(seed=0))
    except NotImplementedError:  # a RuntimeError too: a stub, not an answer
        raise
    except RuntimeError:
        return passed("RuntimeError outside a process group")
    except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
        return failed(f"outside a process group: {type(error).__name__}: {str(error)[:80]}",
                      "no process-group check: raise RuntimeError('... needs an initialised process group ...') "
                      "when dist.is_initialized() is False")
    return failed("outside a process group: no error", "raise RuntimeError when dist.is_initialized() is False")


# ------------------------------------------------------- Exercise 5.2: all_reduce_gradients --
def _all_reduce_results(impl):
    """The ranks' view of one all_reduce_gradients call on a model with an unused layer; a failure when the
    learner's code raised (the unused layer's .grad is None: the likely cause)."""
    try:
        return _in_ranks(ranks.all_reduce, impl)
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 - the learner's exception, raised in the ranks
        return failed(f"{type(error).__name__}: {str(error)[:100]}",
                      "the model has a layer the loss does not use: its .grad is None; skip such parameters "
                      "instead of all-reducing None")


@CHECKS.add("5.2", "every .grad becomes the mean over ranks",
            hint="dist.all_reduce(p.grad) sums over ranks in place; then divide by dist.get_world_size()")
def all_reduce_is_mean(impl):
    results = _all_reduce_results(impl)
    if isinstance(results, Outcome):
        return results
    for rank, r in enumerate(results):
        if r["lost"]:
            return failed(f"rank {rank}: a parameter's .grad is None after all_reduce_gradients",
                          "all-reduce .grad in place (or assign the result back): the gradients must stay in .grad")
        if not _close(r["got"], r["mean"]):
            return failed(f"rank {rank}: max |diff| {max_abs_diff(r['got'], r['mean']):.2e} vs the mean over ranks",
                          _not_averaged_hint(r))
    return passed(f"max |diff| {max(max_abs_diff(r['got'], r['mean']) for r in results):.1e} vs the mean over ranks")


@CHECKS.add("5.2", "parameters without a gradient stay None",
            hint="skip a parameter whose .grad is None instead of all-reducing it")
def all_reduce_skips_none(impl):
    results = _all_reduce_results(impl)
    if isinstance(results, Outcome):
        return results
    if not all(r["none_kept"] for r in results):
        return failed("a parameter that got no gradient has a .grad after all_reduce_gradients",
                      "leave .grad None where backward left it: an unused parameter must not get a zero gradient "
                      "(the optimizer would still apply weight decay and momentum to it)")
    return passed("the unused layer's .grad stays None on both ranks; no crash")


@CHECKS.add("5.2", "two SGD steps equal one process on the concatenated batch",
            hint="broadcast the weights once, then after every backward all-reduce and average the gradients")
def all_reduce_training(impl):
    results = _in_ranks(ranks.train_sgd, impl)
    if isinstance(results, Outcome):
        return results
    worst = max(max_abs_diff(got, ref) for got, ref in results)
    if not all(_close(got, ref) for got, ref in results):
        return failed(f"parameters after 2 steps: max |diff| {worst:.2e} vs {ONE_PROCESS}",
                      "the averaged gradient of equal-sized rank batches is the big batch's gradient: "
                      "see the checks above for which part differs")
    return passed(f"parameters max |diff| {worst:.1e} vs {ONE_PROCESS}, 2 SGD steps")


# ---------------------------------------------------------------- Exercise 5.3: OverlappedDDP --
def _ddp_results(impl, bucket_mb=None):
    results = _in_ranks(ranks.ddp_one_backward, impl, bucket_mb)
    if isinstance(results, Outcome):
        return results
    for rank, r in enumerate(results):
        if r["got"] is None:
            return failed(f"rank {rank}: a used parameter has no .grad after finish_gradient_synchronization()",
                          "leave the averaged gradient in each parameter's .grad")
    return results


@CHECKS.add("5.3", "bucket_mb <= 0: ValueError; outside a process group: RuntimeError",
            hint="validate bucket_mb (None or > 0) and check dist.is_initialized() in __init__")
def ddp_bad_input(impl):
    if not dist.is_initialized():
        try:
            impl.OverlappedDDP(ranks.make_net(seed=0))
            return failed("outside a process group: no error", "raise RuntimeError when dist.is_initialized() is False")
        except NotImplementedError:  # a RuntimeError too: a stub, not an answer
            raise
        except RuntimeError:
            pass
        except Exception as error:  # noqa: BLE001
            return failed(f"outside a process group: {type(error).__name__}: {str(error)[:80]}",
                          "no process-group check: raise RuntimeError when dist.is_initialized() is False")
    results = _in_ranks(ranks.bad_bucket_mb, impl)
    if isinstance(results, Outcome):
        return results
    wrong = {bad: what for bad, what in results[0].items() if what != "ValueError"}
    if wrong:
        return failed(f"bucket_mb {', '.join(f'{k}: {v}' for k, v in wrong.items())}",
                      "bucket_mb unchecked: a bucket of <= 0 MiB can hold nothing; raise ValueError")
    return passed("RuntimeError outside a group; ValueError for bucket_mb 0 and -1.5")


@CHECKS.add("5.3", "broadcasts rank 0's weights at construction",
            hint="call your broadcast_parameters(module, src=0) in __init__, as DDP does")
def ddp_broadcasts(impl):
    results = _ddp_results(impl)
    if isinstance(results, Outcome):
        return results
    for rank, r in enumerate(results):
        if not torch.equal(r["weights"], r["want_weights"]):
            return failed(f"rank {rank} kept its own initial weights or buffers (max |diff| "
                          f"{max_abs_diff(r['weights'], r['want_weights']):.2e} vs rank 0's)",
                          "no broadcast at construction: ranks that start from different weights never agree; "
                          "broadcast rank 0's parameters and buffers in __init__")
    return passed("every rank holds rank 0's weights after construction")


@CHECKS.add("5.3", "per parameter: .grad is the mean after finish_gradient_synchronization()",
            hint="launch dist.all_reduce(grad, async_op=True) per parameter; in finish, wait() on every handle, "
                 "divide by the world size")
def ddp_averages(impl):
    results = _ddp_results(impl)
    if isinstance(results, Outcome):
        return results
    for rank, r in enumerate(results):
        if not _close(r["got"], r["mean"]):
            hint = _not_averaged_hint(r)
            if any(not torch.equal(x["weights"], x["want_weights"]) for x in results):
                hint = "the ranks did not start from rank 0's weights and buffers: broadcast both in __init__"
            return failed(f"rank {rank}: max |diff| {max_abs_diff(r['got'], r['mean']):.2e} vs the mean over ranks", hint)
    return passed(f"max |diff| {max(max_abs_diff(r['got'], r['mean']) for r in results):.1e} vs the mean over ranks")


@CHECKS.add("5.3", "overlap: all-reduces start during backward, last layers first",
            hint="launch each all-reduce from a post-accumulate-grad hook as soon as the gradient is final")
def ddp_overlaps(impl):
    results = _ddp_results(impl)
    if isinstance(results, Outcome):
        return results
    r = results[0]
    if r["total"] == 0:
        return failed("no all-reduce at all in backward and finish_gradient_synchronization()",
                      "all-reduce the gradients with dist.all_reduce(..., async_op=True)")
    if r["before_first_layer"] == 0:
        return failed(f"{r['during']} of {r['total']} all-reduces were launched during backward, none before "
                      "backward reached the first layer: nothing overlapped",
                      "launch from hooks (register_post_accumulate_grad_hook) as gradients become final, in "
                      "reverse registration order, instead of all at once in finish_gradient_synchronization()")
    return passed(f"{r['before_first_layer']} of {r['total']} all-reduces launched before the first layer's "
                  "gradient existed")


@CHECKS.add("5.3", "buckets: bucket_mb MiB, filled in reverse registration order",
            hint="walk the parameters in reverse registration order, closing a bucket when the next gradient "
                 "would pass bucket_mb * 2**20 bytes; one all-reduce per bucket")
def ddp_buckets(impl):
    results = _in_ranks(ranks.buckets, impl)
    if isinstance(results, Outcome):
        return results
    r = results[0]
    if r["sizes"] != [36, 6]:
        if sorted(r["sizes"]) == [6, 12, 24]:
            hint = "one all-reduce per parameter: with bucket_mb given, gradients travel in buckets"
        elif r["sizes"] in ([30, 12], [42], [12, 30]):
            hint = ("buckets filled in registration order: fill them from the last parameter backwards (the "
                    "order backward produces gradients), so the first bucket is ready first")
        else:
            hint = "bucket_mb is in MiB (2**20 bytes); a bucket closes when the next gradient would not fit"
        return failed(f"all-reduce sizes {r['sizes']} (elements) for weights of 6, 24, 12 elements and "
                      f"buckets of {ranks.BUCKET_MB * 2**20:.0f} bytes; expected [36, 6]", hint)
    for rank, r in enumerate(results):
        if not _close(r["got"], r["mean"]):
            return failed(f"rank {rank}: with buckets, max |diff| {max_abs_diff(r['got'], r['mean']):.2e} vs the mean",
                          _not_averaged_hint(r))
    return passed("2 all-reduces of 36 and 6 elements (the last two weights together); gradients are the mean")


@CHECKS.add("5.3", "no_sync: nothing sent; the next backward sends the accumulated sum",
            hint="under no_sync() the hooks do nothing and .grad accumulates; the next synced backward "
                 "all-reduces .grad as accumulated (post-accumulate-grad hooks see it)")
def ddp_no_sync(impl):
    results = _in_ranks(ranks.no_sync, impl)
    if isinstance(results, Outcome):
        return results
    r = results[0]
    if r["under"]:
        return failed(f"{r['under']} all-reduce(s) during a backward under no_sync()",
                      "no_sync still communicates: under no_sync() nothing may be sent (that is its whole point: "
                      "accumulation needs it for speed, not for correctness)")
    for rank, r in enumerate(results):
        if r["got"] is None:
            return failed(f"rank {rank}: a parameter has no .grad after the synced backward",
                          "keep the accumulated gradients in .grad")
        if not _close(r["got"], r["mean"]):
            hint = _not_averaged_hint(r)
            if _close(r["got"], r["early_read"]):
                hint = ("only the last micro-batch's gradient was averaged: the hook read the gradient before "
                        "accumulation (a tensor hook, register_hook); use register_post_accumulate_grad_hook and "
                        "all-reduce p.grad")
            return failed(f"rank {rank}: after no_sync + one synced backward, max |diff| "
                          f"{max_abs_diff(r['got'], r['mean']):.2e} vs the mean of the accumulated gradients", hint)
    return passed("0 all-reduces under no_sync; then the accumulated gradients, averaged")


@CHECKS.add("5.3", "a parameter without a gradient never holds up its bucket",
            hint="in finish_gradient_synchronization(), launch every bucket not yet launched, with only the "
                 "parameters that have a .grad")
def ddp_unused_parameter(impl):
    results = _in_ranks(ranks.unused_parameter, impl)
    if isinstance(results, Outcome):
        return results
    for rank, r in enumerate(results):
        if r["got"] is None:
            return failed(f"rank {rank}: a used parameter lost its .grad", "keep the averaged gradients in .grad")
        if not _close(r["got"], r["mean"]):
            hint = ("a bucket that never fires: the bucket holding an unused parameter never became complete, so "
                    "its gradients were never sent; launch incomplete buckets in finish_gradient_synchronization()"
                    if r["sent"] == 0 else _not_averaged_hint(r))
            return failed(f"rank {rank}: with an unused layer in the bucket, max |diff| "
                          f"{max_abs_diff(r['got'], r['mean']):.2e} vs the mean ({r['sent']} all-reduce(s) sent)", hint)
        if not r["unused_none"]:
            return failed(f"rank {rank}: the unused layer has a .grad",
                          "a parameter that got no gradient keeps .grad None (leave it out of the bucket's tensor)")
    return passed("the unused layer's .grad stays None; the others are averaged")


@CHECKS.add("5.3", "buckets + no_sync accumulation: two SGD steps equal one process",
            hint="each step: no_sync for all micro-batches but the last, finish, step: the big batch's step")
def ddp_training(impl):
    results = _in_ranks(ranks.train_buckets, impl)
    if isinstance(results, Outcome):
        return results
    worst = max(max_abs_diff(got, ref) for got, ref in results)
    if not all(_close(got, ref) for got, ref in results):
        return failed(f"parameters after 2 steps of 2 micro-batches: max |diff| {worst:.2e} vs {ONE_PROCESS}",
                      "see the checks above for which part differs (broadcast, averaging, buckets, no_sync)")
    return passed(f"parameters max |diff| {worst:.1e} vs {ONE_PROCESS}, 2 steps x 2 micro-batches x 2 ranks")


# ------------------------------------------------------- Exercise 5.4: global_token_mean_loss --
@CHECKS.add("5.4", "unequal token counts: the gradient of the token mean over every rank's tokens",
            hint="all-reduce the labelled-token count and divide the summed loss by it (x world size)")
def token_mean_gradient(impl):
    results = _in_ranks(ranks.token_mean, impl)
    if isinstance(results, Outcome):
        return results
    r = results[0]
    if not _close(r["got"], r["want"]):
        if _close(r["got"], r["per_rank"]):
            hint = ("per-rank token normalisation: each rank divided by its own token count "
                    f"({r['counts']}), so averaging gives the mean of per-rank means; all-reduce the count")
        elif not bool(torch.isfinite(r["got"]).all()):
            hint = "NaN/inf: a rank with no labelled token divided by its own count of 0; use the global count"
        else:
            c = _ratio(r["got"], r["want"])
            hint = (f"the gradient is {c:.3g} x the global token mean's: multiply by the world size (the ranks' "
                    "gradients are averaged afterwards)" if c is not None else
                    "return this rank's summed loss x world size / the global labelled count")
        return failed(f"token counts {r['counts']}: averaged gradient max |diff| {max_abs_diff(r['got'], r['want']):.2e} "
                      f"vs one process's token mean", hint)
    return passed(f"token counts {r['counts']}: max |diff| {max_abs_diff(r['got'], r['want']):.1e} vs one process")


@CHECKS.add("5.4", "the value: summed loss x world size / global labelled count",
            hint="return summed cross-entropy (ignore_index=-100) * world_size / all-reduced count")
def token_mean_value(impl):
    results = _in_ranks(ranks.token_mean, impl)
    if isinstance(results, Outcome):
        return results
    for rank, r in enumerate(results):
        if not abs(r["value"] - r["want_value"]) <= 1e-5 * max(1.0, abs(r["want_value"])):
            c = r["value"] / r["want_value"] if r["want_value"] else float("nan")
            hint = (f"{c:.3g} x the expected value: multiply by the world size" if abs(c * WORLD - 1) < 1e-3 else
                    "this rank's summed loss x world size / the labelled count over every rank")
            return failed(f"rank {rank}: loss {r['value']:.6f}, expected {r['want_value']:.6f}", hint)
    return passed("every rank's loss equals its summed loss x world size / global count")


@CHECKS.add("5.4", "no labelled token on any rank: ValueError",
            hint="if the all-reduced count is 0, raise ValueError (the token mean would be 0/0)")
def token_mean_no_tokens(impl):
    results = _in_ranks(ranks.no_tokens, impl)
    if isinstance(results, Outcome):
        return results
    quiet = [(rank, what) for rank, (kind, what) in enumerate(results) if kind != "ValueError"]
    if quiet:
        return failed(f"every label -100 on every rank: rank {quiet[0][0]} {quiet[0][1]}",
                      "a global count of 0 must raise ValueError instead of returning NaN (0/0)")
    return passed("ValueError on every rank")


# ------------------------------------------------------------ Exercise 5.5: ShardedOptimizer --
@CHECKS.add("5.5", "parameters after 3 AdamW steps equal the unsharded optimizer's, on every rank",
            hint="step your shard with the inner optimizer, then broadcast every parameter from its owner")
def sharded_matches_adamw(impl):
    results = _in_ranks(ranks.sharded_steps, impl)
    if isinstance(results, Outcome):
        return results
    for rank, r in enumerate(results):
        if not _close(r["got"], r["want"]):
            moved = (r["got"] - r["start"]).abs().reshape(-1)
            hint = ("the parameters differ across ranks: each rank stepped only its shard; broadcast every "
                    "parameter from its owner after the step" if not torch.equal(results[0]["got"], results[1]["got"])
                    else "the step must be AdamW's on the mean gradient: same hyperparameters, every parameter "
                         "stepped by exactly one rank")
            if r["pending"]:
                hint = f"{r['pending']} asynchronous broadcast(s) never waited on: wait() on every handle"
            return failed(f"rank {rank}: parameters after 3 steps max |diff| {max_abs_diff(r['got'], r['want']):.2e} vs "
                          f"torch.optim.AdamW ({int((moved > 0).sum())} of {moved.numel()} values moved)", hint)
    return passed(f"max |diff| {max(max_abs_diff(r['got'], r['want']) for r in results):.1e} vs torch.optim.AdamW, "
                  "the same on both ranks")


@CHECKS.add("5.5", "state only for this rank's parameters, balanced by size",
            hint="assign whole parameters to ranks (largest first to the least-loaded rank); the inner "
                 "optimizer gets only this rank's, and self.state is its state")
def sharded_state(impl):
    results = _in_ranks(ranks.sharded_steps, impl)
    if isinstance(results, Outcome):
        return results
    sizes = results[0]["sizes"]
    kept = [set(r["kept"]) for r in results]
    if kept[0] & kept[1]:
        return failed(f"both ranks keep optimizer state for parameters {sorted(kept[0] & kept[1])} "
                      f"(rank 0: {len(kept[0])}, rank 1: {len(kept[1])} of {len(sizes)})",
                      "shard state kept on every rank: ZeRO-1 keeps each parameter's optimizer state on its owner "
                      "only; give the inner optimizer this rank's parameters only, and make self.state its state")
    missing = set(range(len(sizes))) - kept[0] - kept[1]
    if missing:
        return failed(f"no rank keeps state for parameters {sorted(missing)}",
                      "every parameter needs an owner that steps it")
    loads = [sum(sizes[i] for i in k) for k in kept]
    if max(loads) - min(loads) > max(sizes):
        return failed(f"elements per rank {loads}: unbalanced (largest parameter {max(sizes)})",
                      "balance by size: assign the largest parameters first, each to the least-loaded rank")
    return passed(f"disjoint shards covering all {len(sizes)} parameters, {loads[0]} and {loads[1]} elements")


@CHECKS.add("5.5", "zero_grad clears every parameter",
            hint="param_groups hold every parameter, so the inherited Optimizer.zero_grad clears them all")
def sharded_zero_grad(impl):
    results = _in_ranks(ranks.zero_grad_all, impl)
    if isinstance(results, Outcome):
        return results
    for rank, cleared in enumerate(results):
        if not all(cleared):
            return failed(f"rank {rank}: {cleared.count(False)} of {len(cleared)} parameters kept their gradient",
                          "zero_grad of your shard only: the gradients of other ranks' parameters would add up "
                          "into the next step; clear every parameter")
    return passed("every parameter's gradient cleared on both ranks")


@CHECKS.add("5.5", "a learning rate set on param_groups takes effect",
            hint="copy each param_group's hyperparameters into the inner optimizer's groups before stepping")
def sharded_hyperparameters(impl):
    results = _in_ranks(ranks.sharded_steps, impl, 1, 0.0)
    if isinstance(results, Outcome):
        return results
    for rank, r in enumerate(results):
        if not torch.equal(r["got"], r["start"]):
            return failed(f"rank {rank}: lr set to 0 on param_groups, yet parameters moved (max |diff| "
                          f"{max_abs_diff(r['got'], r['start']):.2e})",
                          "stale hyperparameters: a scheduler writes param_groups; copy lr (and the rest) into the "
                          "inner optimizer's groups at every step")
    return passed("lr 0 on param_groups: no parameter moved")

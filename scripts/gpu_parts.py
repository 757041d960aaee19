"""The parts of the GPU check (scripts/gpu_check.py): what each one runs and measures.

Each part is a function part(ctx, result): it runs on ctx.device ("cuda" on a GPU machine, "cpu" in the
self-test, with ctx.small sizes) and records what it measured in `result`: figures (a value, its target,
PASS or MISS), tables, notes and the PNG figures it wrote into ctx.out. The runner calls every part in a
process of its own with a time limit, so a part may crash or hang without taking the others along.

torch and the library are imported inside the parts: the runner, which only starts processes, stays
free of torch (a process that forks must not have started CUDA or torch's threads); the processes that
run the parts get them preloaded (PRELOAD).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Modules the part processes start with (imported once, in the process they are forked from; torch._dynamo is
#: what the first torch.optim optimizer imports, seconds of it).
PRELOAD = ["torch", "torch._dynamo", "matplotlib.figure", "matplotlib.backends.backend_agg", "efftrain_lib.training",
           "efftrain_lib.memory_validation", "efftrain_lib.memory", "efftrain_lib.precision", "efftrain_lib.liveplot",
           "efftrain_lib.accumulation"]

MIB = 2**20


@dataclass(frozen=True)
class Context:
    """What a part is given: where it runs, how big, where its files go, and when it must be done."""

    device: str  # "cuda", or "cpu" in the self-test
    small: bool  # the self-test's small sizes
    list_only: bool  # notebooks and benchmarks: name the commands instead of running them
    repo: str
    out: str  # the report's folder: PNG figures go here
    logs: str  # the parts' logs (not part of the report)
    deadline: float  # time.time() by which the part must be done (the runner kills it then)
    python: str = sys.executable

    def seconds_left(self) -> float:
        return self.deadline - time.time()


@dataclass
class Result:
    """What a part found. Saved to `path` at every addition, so a part killed at its time limit still
    reports what it measured before."""

    path: str
    status: str = "running"  # ok | failed | timeout | not run | listed | not in this checkout
    figures: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    files: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    error: str = ""

    def save(self) -> None:
        Path(self.path).write_text(json.dumps(asdict(self), indent=1))

    def figure(self, name: str, value, target: str = "", passed: bool | None = None) -> None:
        verdict = "-" if passed is None else "PASS" if passed else "MISS"
        self.figures.append({"name": name, "value": str(value), "target": target, "verdict": verdict})
        self.save()

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        self.tables.append({"title": title, "columns": columns, "rows": [[str(c) for c in row] for row in rows]})
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.save()

    def file(self, name: str) -> None:
        self.files.append(name)
        self.save()

    def stop(self, status: str, reason: str) -> None:
        """The part did not run (or only listed what it would run), and why."""
        self.status = status
        self.note(reason)


def _png(figure, ctx: Context, result: Result, name: str) -> None:
    figure.savefig(Path(ctx.out) / name, dpi=90)
    result.file(name)


def _fmt_bytes(n: float) -> str:
    return f"{n / MIB:.3f} MiB"


def _prepare(ctx: Context, deterministic: bool = False) -> None:
    """One CPU thread on a CPU (the self-test shares a small machine; see devices.use_one_cpu_thread).
    deterministic: run-to-run identical kernels, so that 'ours == the reference' compares the technique, not
    the noise of atomics in a backward; cuBLAS needs its workspace setting before its first matmul."""
    import torch

    from efftrain_lib.devices import use_one_cpu_thread

    use_one_cpu_thread(ctx.device)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


# ----------------------------------------------------------------------------------------------
# environment: what the figures were measured on
# ----------------------------------------------------------------------------------------------


def environment(ctx: Context, result: Result) -> None:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count()}
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else "?"
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "?"
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    for package in ("peft", "transformers", "nbval", "ipykernel"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            info[package] = "not installed"
    result.info = info
    result.figure("device", info["device"])
    result.figure("torch / CUDA build", f"{info['torch']} / {info['cuda_build']}")


# ----------------------------------------------------------------------------------------------
# autocast: the op table against the documented lists
# ----------------------------------------------------------------------------------------------

DOC_URL = "https://docs.pytorch.org/docs/stable/amp.html#autocast-op-reference"
DOC_SOURCE = "docs/source/amp.md at pytorch/pytorch 4e0ff98"
#: PyTorch's "Autocast Op Reference" (DOC_URL; read in DOC_SOURCE, a page that already documents
#: torch._functorch.config.backward_pass_autocast, which torch 2.13 has): for each op that
#: efftrain_lib.precision.autocast_op_dtypes runs, whether the lists name it under "... Ops that can
#: autocast to float16/bfloat16" (lower) or "... Ops that can autocast to float32" (fp32). An op in
#: neither list "runs in the type defined by its inputs". CPU's lists hold for float16 too ("float16
#: shares the lists of bfloat16").
DOC_LISTS = {
    "cuda": {"lower": {"linear", "matmul", "bmm"},
             "fp32": {"softmax", "log_softmax", "layer_norm", "sum", "exp", "cross_entropy", "mse_loss"}},
    "cpu": {"lower": {"linear", "matmul", "bmm", "scaled_dot_product_attention"},
            "fp32": {"cross_entropy", "mse_loss"}},
}
#: The name each op goes by in ATen's registration lists (cross_entropy is log_softmax + nll_loss).
HEADER_NAMES = {"cross_entropy": "nll_loss"}


def expected_dtype(lists: dict, op: str, autocast_dtype, input_dtype):
    import torch

    if op in lists["lower"]:
        return autocast_dtype
    return torch.float32 if op in lists["fp32"] else input_dtype


def header_lists() -> dict | None:
    """The CUDA autocast lists the installed torch registers (ATen/autocast_mode.h, shipped in the wheel):
    AT_FORALL_LOWER_PRECISION_FP and the AT_FORALL_FP32* macros. None when the header is not there."""
    import torch

    header = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        return None
    text = header.read_text()

    def names(macro: str) -> set[str]:
        match = re.search(rf"#define {macro}\(_\)(.*?)(?:\n\s*\n|#define)", text, re.S)
        return set(re.findall(r"_\((\w+)", match.group(1))) if match else set()

    return {"lower": names("AT_FORALL_LOWER_PRECISION_FP"),
            "fp32": names("AT_FORALL_FP32") | names("AT_FORALL_FP32_SET_OPT_DTYPE")}


def autocast_table(ctx: Context, result: Result) -> None:
    import torch

    from efftrain_lib.precision import autocast_op_dtypes

    _prepare(ctx)
    short = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    columns = [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
               (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)]
    measured = {(a, i): autocast_op_dtypes(ctx.device, a, input_dtype=i) for a, i in columns}
    docs = DOC_LISTS[ctx.device]
    header = header_lists() if ctx.device == "cuda" else None
    if header is not None and not (header["lower"] and header["fp32"]):
        result.note("ATen/autocast_mode.h no longer holds the AT_FORALL_* lists this script reads: "
                    "no check against them.")
        header = None
    in_header = None
    if header is not None:
        in_header = {kind: {op for op in measured[columns[0]] if HEADER_NAMES.get(op, op) in names}
                     for kind, names in header.items()}
    rows, off_docs, off_header = [], set(), set()
    for op in measured[columns[0]]:
        row = [op]
        for a, i in columns:
            got = measured[(a, i)][op]
            doc = expected_dtype(docs, op, a, i)
            row.append(short[got] if got == doc else f"{short[got]} (docs: {short[doc]})")
            off_docs |= {op} if got != doc else set()
            if in_header is not None and got != expected_dtype(in_header, op, a, i):
                off_header.add(op)
        rows.append(row)
    result.table(f"autocast on {ctx.device}: output dtype of each op (autocast dtype, input dtype)",
                 ["op"] + [f"{short[a]} autocast, {short[i]} in" for a, i in columns], rows)
    result.note(f"Documented: PyTorch's Autocast Op Reference ({DOC_URL}; read in {DOC_SOURCE}), its "
                f"{ctx.device.upper()} lists: an op in neither the lower-precision nor the float32 list runs in its "
                "inputs' dtype. Registered: the AT_FORALL_* lists of ATen/autocast_mode.h in the installed torch, "
                "what its CUDA autocast dispatches by.")
    n = len(rows)
    if header is None:
        result.figure("ops whose dtype matches the Autocast Op Reference", f"{n - len(off_docs)}/{n}",
                      f"{n}/{n}", not off_docs)
        if ctx.device == "cuda":
            result.note("ATen/autocast_mode.h is not in this torch install: no check against the registered lists.")
        return
    explained = off_docs - off_header  # the build registers them as measured: the page leaves them out
    result.figure("ops whose dtype matches the lists this torch registers (ATen/autocast_mode.h)",
                  f"{n - len(off_header)}/{n}", f"{n}/{n}", not off_header)
    result.figure("ops whose dtype matches the Autocast Op Reference, or differs where the page omits "
                  "what the build registers", f"{n - len(off_docs - explained)}/{n}", f"{n}/{n}",
                  not off_docs - explained)
    if explained:
        result.note(f"Not in the documented CUDA lists, yet registered by this torch's autocast_mode.h and "
                    f"measured so: {sorted(explained)} (a gap in the page, not in the library).")


# ----------------------------------------------------------------------------------------------
# loss scaling: LossScaler against GradScaler, through the library's one training loop
# ----------------------------------------------------------------------------------------------


class _OverflowAt:
    """The course's loss, made inf (odd steps) or NaN (even steps) at the given steps: an fp16
    overflow on demand. One call per step (windows of one micro-batch)."""

    def __init__(self, steps):
        self.steps, self.calls = set(steps), 0

    def __call__(self, logits, labels):
        from efftrain_lib.losses import language_model_loss

        loss = language_model_loss(logits, labels)
        step, self.calls = self.calls, self.calls + 1
        return loss * (math.inf if step % 2 else math.nan) if step in self.steps else loss


def _scaled_run(scaler, device: str, steps: int, inject, clip, small: bool):
    """Train the tiny transformer in fp16 autocast with `scaler` through training.train; returns
    (scale before each step and after the last, skipped steps, losses, final parameters)."""
    import torch

    from efftrain_lib import data
    from efftrain_lib.models import TinyConfig, TinyTransformer
    from efftrain_lib.training import train

    torch.manual_seed(0)
    size = dict(hidden_size=16, n_layers=1, ffn_dim=32) if small else dict(hidden_size=32, n_layers=2, ffn_dim=64)
    model = TinyTransformer(TinyConfig(n_heads=2, max_seq_len=16, **size)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    get_batch = data.batch_sampler(data.encode(data.load_text("sonnets"))[:4000], batch_size=4, seq_len=16)
    log = train(model, get_batch, steps=steps, optimizer=optimizer, autocast_dtype=torch.float16, scaler=scaler,
                max_grad_norm=clip, loss_fn=_OverflowAt(inject), progress=False)
    return (log.scales + [scaler.get_scale()], log.skipped_steps, log.losses,
            [p.detach().cpu() for p in model.parameters()])


def _loss_diff(a: list[float], b: list[float]) -> float:
    """max |a - b| over two runs' losses; inf where one is inf/NaN and the other not the same (NaN == NaN here)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if math.isfinite(x) and math.isfinite(y):
            worst = max(worst, abs(x - y))
        elif not (x == y or (math.isnan(x) and math.isnan(y))):
            return math.inf
    return worst


def loss_scaler(ctx: Context, result: Result) -> None:
    import torch

    from efftrain_lib.comparing import max_abs_diff
    from efftrain_lib.precision import LossScaler

    _prepare(ctx, deterministic=True)
    steps = 8 if ctx.small else 40
    inject = (3, 4, 6) if ctx.small else (3, 4, 9, 10, 11, 20, 31)
    scenarios = {
        "injected inf/NaN, unscale_ + clip": (dict(init_scale=2.0**10, growth_interval=3), inject, 1.0),
        "injected inf/NaN, no clip": (dict(init_scale=2.0**10, growth_interval=3), inject, None),
        "real fp16 overflow from scale 2**24": (dict(init_scale=2.0**24, growth_interval=4), (), 1.0),
    }
    if ctx.small:  # the self-test: the code paths, on fp16 matmuls that a CPU runs slowly
        del scenarios["injected inf/NaN, no clip"]
    rows, first = [], None
    for name, (kwargs, injected, clip) in scenarios.items():
        ours = _scaled_run(LossScaler(ctx.device, **kwargs), ctx.device, steps, injected, clip, ctx.small)
        ref = _scaled_run(torch.amp.GradScaler(ctx.device, **kwargs), ctx.device, steps, injected, clip, ctx.small)
        diff, losses = max_abs_diff(ours[3], ref[3]), _loss_diff(ours[2], ref[2])
        noise = loss_noise = 0.0  # the control: two GradScaler runs, identical but for the kernels' own noise
        if not ctx.small:
            again = _scaled_run(torch.amp.GradScaler(ctx.device, **kwargs), ctx.device, steps, injected, clip, False)
            noise, loss_noise = max_abs_diff(again[3], ref[3]), _loss_diff(again[2], ref[2])
        skipped_ok = ours[1] == ref[1] and (not injected or ref[1] == list(injected))
        rows.append([name, ours[0] == ref[0], f"{ours[1]} / {ref[1]}", f"{losses:.2e}", f"{diff:.2e}",
                     "-" if ctx.small else f"{loss_noise:.2e} / {noise:.2e}", f"{min(ref[0]):g} .. {max(ref[0]):g}"])
        same = ours[0] == ref[0] and skipped_ok and losses <= 10 * loss_noise and diff <= 10 * noise
        result.figure(f"{name}: scale trajectory, skipped steps, losses and parameters vs GradScaler({ctx.device!r})",
                      "identical" if same and diff == losses == 0 else
                      f"within the control: parameters {diff:.1e}, losses {losses:.1e}" if same else
                      f"different: scales equal {ours[0] == ref[0]}, skipped steps as injected {skipped_ok}, "
                      f"parameters {diff:.1e}, losses {losses:.1e}",
                      "identical (losses and parameters: equal, or within 10x two GradScaler runs' difference)", same)
        if not injected:
            result.figure(f"{name}: steps skipped by a real overflow", len(ref[1]), ">= 1", len(ref[1]) >= 1)
        first = first or (name, ours, ref)
    result.table(f"LossScaler vs torch.amp.GradScaler({ctx.device!r}), fp16 autocast, tiny transformer, {steps} "
                 "steps through training.train", ["scenario", "same scales", "skipped (ours / GradScaler)",
                                                  "losses max |diff|", "parameters max |diff|",
                                                  "two GradScaler runs: losses / parameters", "scale range"], rows)
    result.note("Deterministic algorithms on (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG); the "
                "column 'two GradScaler runs' is the control: what the kernels alone change between identical runs.")
    _plot_scales(ctx, result, *first)


def _plot_scales(ctx: Context, result: Result, name: str, ours, ref) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.step(range(len(ref[0])), ref[0], where="post", color="black", lw=1, label="torch.amp.GradScaler")
    ax.step(range(len(ours[0])), ours[0], where="post", lw=4, alpha=0.4, label="efftrain LossScaler")
    for step in ref[1]:
        ax.axvline(step, color="#c44e52", lw=0.8, alpha=0.5)
    ax.set(yscale="log", xlabel="step (red: skipped)", ylabel="loss scale", title=f"{name} on {ctx.device}")
    ax.legend()
    _png(fig, ctx, result, "gpu_loss_scale.png")


# ----------------------------------------------------------------------------------------------
# checkpointing and accumulation: equal to their references on the device
# ----------------------------------------------------------------------------------------------


def _checkpoint_grads(config, batch, impl, autocast_dtype, device):
    import torch

    from efftrain_lib.checkpointing import enable_checkpointing
    from efftrain_lib.comparing import gradient_dict
    from efftrain_lib.devices import autocast
    from efftrain_lib.losses import language_model_loss
    from efftrain_lib.models import TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer(config).to(device).train()
    if impl is not None:
        enable_checkpointing(model, impl=impl)
    torch.manual_seed(1)  # the same dropout masks in every run (and, restored, in every recompute)
    x, y = (t.to(device) for t in batch)
    with autocast(device, autocast_dtype):
        logits = model(x)
    language_model_loss(logits, y).backward()
    return gradient_dict(model)


def equality(ctx: Context, result: Result) -> None:
    import torch

    from efftrain_lib.accumulation import accumulation_step
    from efftrain_lib.comparing import gradient_dict, max_abs_diff
    from efftrain_lib.losses import language_model_loss
    from efftrain_lib.models import TinyConfig, TinyTransformer

    _prepare(ctx, deterministic=True)
    config = TinyConfig(hidden_size=32 if ctx.small else 64, n_layers=2 if ctx.small else 4,
                        n_heads=4, ffn_dim=64 if ctx.small else 172, dropout=0.1)
    generator = torch.Generator().manual_seed(0)
    batch = tuple(torch.randint(0, config.vocab_size, (4, 32 if ctx.small else 64), generator=generator)
                  for _ in range(2))
    tolerances = {None: 1e-6} if ctx.small else {None: 1e-6, torch.bfloat16: 1e-4}
    for dtype, tol in tolerances.items():
        label = "fp32" if dtype is None else "bf16 autocast"
        ref = _checkpoint_grads(config, batch, "torch", dtype, ctx.device)
        for impl, what in (("ours", "efftrain checkpoint"), (None, "no checkpointing")):
            diff = max_abs_diff(_checkpoint_grads(config, batch, impl, dtype, ctx.device), ref)
            result.figure(f"checkpointing, {label}, dropout 0.1: {what} vs torch.utils.checkpoint "
                          "(use_reentrant=False), max |grad diff|", f"{diff:.2e}", f"<= {tol:g}", diff <= tol)

    # Accumulation: 4 micro-batches of unequal token counts in one window vs one step on their concatenation.
    torch.manual_seed(0)
    model = TinyTransformer(TinyConfig(hidden_size=32, n_layers=2, n_heads=2, ffn_dim=64, max_seq_len=32))
    micro = []
    for lengths in ((3, 30), (12, 7), (32, 1), (20, 25)):
        ids = torch.randint(0, 96, (2, 32), generator=generator)
        labels = torch.randint(0, 96, (2, 32), generator=generator)
        for row, length in enumerate(lengths):
            labels[row, length:] = -100
        micro.append((ids, labels))
    big = model.to(ctx.device)
    language_model_loss(big(torch.cat([x for x, _ in micro]).to(ctx.device)),
                        torch.cat([y for _, y in micro]).to(ctx.device)).backward()
    reference = gradient_dict(big)
    big.zero_grad(set_to_none=True)
    seen = {}
    optimizer = torch.optim.SGD(big.parameters(), lr=0.0)  # lr 0: the step changes nothing; its gradient is read
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.update(gradient_dict(big)))
    accumulation_step(big, optimizer, micro)
    diff = max_abs_diff(seen, reference)
    result.figure("accumulation_step over 4 micro-batches (3..63 labelled tokens each) vs one big batch, fp32, "
                  "max |grad diff|", f"{diff:.2e}", "<= 1e-05", diff <= 1e-5)
    result.note("Tolerances: checkpointing recomputes the same kernels on the same shapes (fp32 1e-6, bf16 "
                "autocast 1e-4, deterministic algorithms on); accumulation runs other shapes than the big batch, "
                "so other matmul reductions (1e-5 in fp32).")


# ----------------------------------------------------------------------------------------------
# the estimator against the allocator, on chapter 0's grid
# ----------------------------------------------------------------------------------------------


def _memory_rows(ctx: Context):
    from efftrain_lib.memory_validation import validation_grid

    grid = validation_grid()
    if ctx.small:  # the self-test: the smallest row of each precision
        smallest = {}
        for config, settings in sorted(grid, key=lambda row: row[1]["batch_size"] * row[1]["seq_len"]):
            smallest.setdefault(settings["precision"], (config, settings))
        return list(smallest.values())
    # fp16 autocast is measured on CUDA only: the grid's bf16 autocast rows above 8 MiB again, in fp16.
    extra = [(c, dict(s, precision="fp16_autocast")) for c, s in grid
             if s.get("precision") == "bf16_autocast" and s["batch_size"] == 16]
    return grid + extra


def _cuda_warm_up() -> None:
    """One matmul per dtype: the workspaces cuBLAS then keeps for good exist before the first configuration."""
    import gc

    import torch

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        a = torch.randn(64, 64, device="cuda", dtype=dtype)
        (a @ a).sum().item()
    del a
    gc.collect()


def memory_estimator(ctx: Context, result: Result) -> None:
    import gc

    import torch

    from efftrain_lib.memory import estimate_training_memory
    from efftrain_lib.memory_validation import describe_settings, measure_training_step, relative_error

    _prepare(ctx)
    cuda = ctx.device == "cuda"
    if cuda:
        _cuda_warm_up()
        result.note(f"Allocated before the grid, after one matmul per dtype (cuBLAS workspaces): "
                    f"{_fmt_bytes(torch.cuda.memory_allocated())}.")
    rows, errors, big = [], [], []
    for config, settings in _memory_rows(ctx):
        label = describe_settings(settings) + ("" if config.hidden_size == 64 else " (3-layer model)")
        predicted = estimate_training_memory(config, **settings)
        if not cuda:  # CPU: the meter's accounting against the estimator's peak (the test suite's comparison)
            measured = measure_training_step(config, **settings).peak.total
            err = relative_error(predicted.peak_bytes, measured)
            rows.append([label, _fmt_bytes(measured), _fmt_bytes(predicted.peak_bytes), f"{err:+.2%}"])
            errors.append((label, err, err))
            continue
        torch.cuda.empty_cache()  # fresh segments: no cached block handed out larger than asked for
        record = measure_training_step(config, **settings)
        stats = torch.cuda.memory_stats()
        gc.collect()
        resident = torch.cuda.memory_allocated()  # what outlives the configuration (workspaces)
        peak = record.peak.total  # torch.cuda.max_memory_allocated over the step
        requested = stats.get("requested_bytes.all.peak", peak)  # the same peak before 512-byte rounding
        net = requested - resident
        raw_err = relative_error(predicted.allocator_peak, peak)
        net_err = relative_error(predicted.allocator_peak, net)
        errors.append((label, raw_err, net_err))
        if net > 8 * MIB:
            big.append((label, net_err))
        rows.append([label, _fmt_bytes(peak), _fmt_bytes(peak - requested), _fmt_bytes(resident), _fmt_bytes(net),
                     _fmt_bytes(predicted.allocator_peak), f"{raw_err:+.2%}", f"{net_err:+.2%}",
                     "" if net <= 8 * MIB else "PASS" if abs(net_err) <= 0.05 else "MISS"])
    if cuda:
        result.table("estimate_training_memory(...).allocator_peak vs torch.cuda.max_memory_allocated, per "
                     "configuration", ["configuration", "allocator peak", "512-byte rounding", "resident outside "
                     "the step", "net (requested - resident)", "predicted", "error vs peak", "error vs net",
                     "> 8 MiB: within 5%"], rows)
        within = sum(abs(e) <= 0.05 for _, e in big)
        result.figure("configurations above 8 MiB (net) within 5% of the estimate", f"{within}/{len(big)}",
                      f"{len(big)}/{len(big)}", bool(big) and within == len(big))
        result.figure("largest |error| vs the net figure, any size", f"{max(abs(e[2]) for e in errors):.2%}")
        result.figure("largest |error| vs the raw allocator peak, any size", f"{max(abs(e[1]) for e in errors):.2%}")
        result.note("Columns: 'allocator peak' is what the meter reports (max_memory_allocated over the step). The "
                    "GPU adds what the estimator does not model, shown apart: the caching allocator rounds every "
                    "block up to 512 bytes (allocated - requested bytes at the peak), and cuBLAS keeps workspaces "
                    "that outlive every configuration ('resident': allocated after the configuration is freed). "
                    "'net' removes both; what remains is the step itself, including SDPA's CUDA kernels (flash / "
                    "memory-efficient attention keep a logsumexp and RNG state where the CPU kernel differs).")
    else:
        result.table("estimate_training_memory(...).peak_bytes vs the meter's CPU accounting (self-test subset)",
                     ["configuration", "measured", "predicted", "error"], rows)
        result.figure("largest |error| (CPU accounting)", f"{max(abs(e[1]) for e in errors):.2%}", "<= 10%",
                      max(abs(e[1]) for e in errors) <= 0.10)
    _plot_errors(ctx, result, errors, cuda)


def _plot_errors(ctx: Context, result: Result, errors, cuda: bool) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.22 * len(errors) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    y = range(len(errors))
    ax.barh([i + 0.2 for i in y], [100 * e[1] for e in errors], height=0.4,
            label="vs allocator peak" if cuda else "vs the meter's accounting")
    if cuda:
        ax.barh([i - 0.2 for i in y], [100 * e[2] for e in errors], height=0.4, label="vs net (no rounding, "
                "no workspaces)")
    ax.axvspan(-5, 5, color="#55a868", alpha=0.15, label="target +-5%")
    ax.set_yticks(list(y), [e[0] for e in errors], fontsize=6)
    ax.invert_yaxis()
    ax.set(xlabel="estimate error (%)", title=f"memory estimator vs {'CUDA allocator' if cuda else 'CPU accounting'}")
    ax.legend(fontsize=7)
    _png(fig, ctx, result, "gpu_memory_estimator.png")


# ----------------------------------------------------------------------------------------------
# the live memory plot, fed by the allocator
# ----------------------------------------------------------------------------------------------


def live_plot(ctx: Context, result: Result) -> None:
    import torch

    from efftrain_lib import data
    from efftrain_lib.checkpointing import enable_checkpointing
    from efftrain_lib.liveplot import LiveMemoryPlot
    from efftrain_lib.meter import MemoryMeter
    from efftrain_lib.models import TinyConfig, TinyTransformer
    from efftrain_lib.training import train

    _prepare(ctx)
    config = TinyConfig(hidden_size=32 if ctx.small else 256, n_layers=4, n_heads=4,
                        ffn_dim=64 if ctx.small else 688, max_seq_len=64)
    get_batch = data.batch_sampler(data.encode(data.load_text("sonnets")), batch_size=2 if ctx.small else 32,
                                   seq_len=32 if ctx.small else 64)
    plot = LiveMemoryPlot(title=f"training memory on {ctx.device}: plain vs checkpointed", interactive=False)
    peaks = {}
    for label, checkpointed in (("plain", False), ("checkpoint every layer", True)):
        torch.manual_seed(0)
        model = TinyTransformer(config).to(ctx.device)
        if checkpointed:
            enable_checkpointing(model)
        meter = MemoryMeter(ctx.device)
        train(model, get_batch, steps=2 if ctx.small else 8, optimizer=torch.optim.AdamW(model.parameters()),
              meter=meter, on_step=plot.attach(meter, label), progress=False)
        peaks[label] = max(r.peak_bytes for r in meter.records)
        sources = {r.peak.source for r in meter.records}
        result.figure(f"{label}: peak per step (source: {sources.pop() if len(sources) == 1 else sources})",
                      _fmt_bytes(peaks[label]))
    plot.savefig(Path(ctx.out) / "gpu_liveplot.png", dpi=90)
    result.file("gpu_liveplot.png")
    ratio = peaks["checkpoint every layer"] / peaks["plain"]
    result.figure("checkpointed / plain peak", f"{ratio:.2f}", "< 1", ratio < 1)


# ----------------------------------------------------------------------------------------------
# notebooks and benchmarks: the course's own commands, with the device the machine has
# ----------------------------------------------------------------------------------------------


def _command(ctx: Context, result: Result, args: list[str], seconds: float, log: Path) -> tuple[int | None, str]:
    """Run args in the repository within `seconds`, output to `log`; (exit code or None on time-out, output)."""
    with open(log, "w") as out:
        try:
            code = subprocess.run(args, cwd=ctx.repo, stdout=out, stderr=subprocess.STDOUT, timeout=seconds).returncode
        except subprocess.TimeoutExpired:
            code = None
    return code, log.read_text(errors="replace")


def notebook_command(ctx: Context) -> list[str]:
    """The README's test command (make test's pytest line) on notebooks/, in parallel where pytest-xdist is
    installed (nbval runs each notebook's cells in one kernel: --dist loadscope keeps a notebook on one worker)."""
    import importlib.util

    args = [ctx.python, "-m", "pytest", "notebooks", "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with",
            "tests/nbval_sanitize.cfg", "--nbval-cell-timeout=300", "-p", "no:cacheprovider", "-v", "-rfE"]
    notebooks = len(list(Path(ctx.repo, "notebooks").glob("*.ipynb")))
    if importlib.util.find_spec("xdist") is not None and notebooks > 1:
        args += ["-n", str(min(notebooks, max(1, (os.cpu_count() or 2) // 2))), "--dist", "loadscope"]
    return args


def nbval_outcomes(output: str) -> dict[str, dict[str, int]]:
    """{notebook: {PASSED: n, FAILED: m, ...}} from pytest -v output, with or without xdist. nbval names a
    cell 'notebooks/01_lora::ipynb::Cell 3' in progress lines and 'notebooks/01_lora.ipynb::Cell 3' in the
    failure summary; a cell seen twice keeps its last outcome."""
    cells = {}
    for line in output.splitlines():
        item = re.search(r"notebooks/([\w.-]+?)(?:\.ipynb|::ipynb)::Cell (\d+)", line)
        outcome = re.search(r"\b(PASSED|FAILED|ERROR|SKIPPED)\b", line)
        if item and outcome:
            cells[item.groups()] = outcome.group(1)
    counts: dict[str, dict[str, int]] = {}
    for (notebook, _), outcome in cells.items():
        counts.setdefault(notebook, {}).setdefault(outcome, 0)
        counts[notebook][outcome] += 1
    return counts


def notebooks(ctx: Context, result: Result) -> None:
    import torch

    import importlib.util

    args = notebook_command(ctx)
    if ctx.list_only:
        return result.stop("listed", "would run: " + " ".join(["python"] + args[1:]))
    missing = [m for m in ("nbval", "ipykernel", "ipywidgets") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"{missing} not installed for {ctx.python}: install the course's test extra (make "
                           "setup), or on a machine without a package index carry scripts/offline_wheels.py's wheels")
    code, output = _command(ctx, result, args, ctx.seconds_left() - 10, Path(ctx.logs) / "notebooks_pytest.log")
    for notebook, seen in sorted(nbval_outcomes(output).items()):
        bad = seen.get("FAILED", 0) + seen.get("ERROR", 0)
        result.figure(f"{notebook}.ipynb (CUDA available: {torch.cuda.is_available()})",
                      ", ".join(f"{n} {k.lower()}" for k, n in sorted(seen.items())), "no failed cell", bad == 0)
    summary = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if summary:
        result.note("pytest's summary of failures:\n" + "\n".join(summary[:40]))
    tail = output.strip().splitlines()[-1:] or ["(no output)"]
    result.figure("pytest", "timed out" if code is None else f"exit {code}: {tail[0].strip('= ')}", "exit 0", code == 0)
    result.note("command: " + " ".join(["python"] + args[1:]))


def benchmarks(ctx: Context, result: Result) -> None:
    scripts = sorted(Path(ctx.repo, "benchmarks").glob("*.py"))
    device = "cuda" if ctx.list_only else ctx.device  # listed: what a GPU run would start
    commands = [[ctx.python, str(path.relative_to(ctx.repo)), "--device", device] for path in scripts]
    if ctx.list_only:
        return result.stop("listed", "would run, one after another: " + "; ".join(
            " ".join(["python"] + c[1:]) for c in commands))
    for i, args in enumerate(commands):
        seconds = (ctx.seconds_left() - 5) / (len(commands) - i)  # a fair share of what is left
        name = Path(args[1]).stem
        code, output = _command(ctx, result, args, seconds, Path(ctx.logs) / f"benchmark_{name}.log")
        lines = [line.strip() for line in output.splitlines() if re.search(r"\b(PASS|MISS)\b|\(reported\)", line)]
        for line in lines:
            verdict = re.search(r"\b(PASS|MISS)\b", line)
            result.figure(name, line.rsplit("(target", 1)[0].replace("(reported)", "").strip(), _target_of(line),
                          None if verdict is None else verdict.group(1) == "PASS")
        if code is None or not lines:
            result.figure(f"{name}: ran", f"timed out after {seconds:.0f} s" if code is None else
                          f"exit {code}, no PASS/MISS line: {output.strip().splitlines()[-1:] or ''}", "", False)


def _target_of(line: str) -> str:
    match = re.search(r"\(target ([^)]*)\)", line)
    return match.group(1) if match else ""


# ----------------------------------------------------------------------------------------------
# later chapters' GPU paths (run only where their modules exist in the checkout)
# ----------------------------------------------------------------------------------------------


def distributed(ctx: Context, result: Result) -> None:
    import torch

    from efftrain_lib import distributed_runs
    from efftrain_lib.launcher import launch

    gpus = torch.cuda.device_count() if ctx.device == "cuda" else 0
    if gpus < 2:
        return result.stop("not run", f"{gpus} GPU(s) here: the nccl path needs one GPU per rank and at least two "
                                      "ranks (nccl refuses two ranks on one GPU); the gloo path is what CI runs.")
    for wrapper in ("overlapped", "torch_ddp"):
        ranks = launch(distributed_runs.matches_one_process, gpus, backend="nccl", wrapper=wrapper)
        diff = max(r["max_abs_diff"] for r in ranks)
        result.figure(f"nccl, {gpus} ranks, {wrapper}: parameters vs one process on the whole batch, max |diff|",
                      f"{diff:.2e}", "<= 1e-05", diff <= 1e-5)


def qlora(ctx: Context, result: Result) -> None:
    import torch
    import torch.nn as nn

    from efftrain_lib.comparing import max_abs_diff
    from efftrain_lib.lora import LoRALinear
    from efftrain_lib.qlora import QLoRALinear, QuantizedLinear

    _prepare(ctx)
    torch.manual_seed(0)
    base = nn.Linear(256, 128)
    on_cpu, on_device = QuantizedLinear(base), QuantizedLinear(base.to(ctx.device))
    same = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(on_cpu.parts(), on_device.parts()))
    result.figure(f"NF4 codes and scales quantized on {ctx.device} equal to those quantized on CPU", same, "True", same)
    # tests/test_qlora.py's equality, on the device: the layer vs LoRA on a Linear holding the dequantized weight.
    layer = QLoRALinear(base, 8, 16)
    nn.init.normal_(layer.lora_B)  # a non-zero adapter, so every gradient path carries something
    frozen = nn.Linear(256, 128).to(ctx.device)
    with torch.no_grad():
        frozen.weight.copy_(layer.dequantized_weight())
        frozen.bias.copy_(base.bias)
    ref = LoRALinear(frozen, 8, 16)
    with torch.no_grad():
        ref.lora_A.copy_(layer.lora_A)
        ref.lora_B.copy_(layer.lora_B)
    x1 = torch.randn(4, 32, 256, device=ctx.device, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    g = torch.randn(4, 32, 128, device=ctx.device)
    (layer(x1) * g).sum().backward()
    (ref(x2) * g).sum().backward()
    diff = max_abs_diff([x1.grad, layer.lora_A.grad, layer.lora_B.grad], [x2.grad, ref.lora_A.grad, ref.lora_B.grad])
    result.figure(f"QLoRALinear on {ctx.device}, fp32: gradients (x, A, B) vs LoRA on the dequantized weight, "
                  "max |diff|", f"{diff:.2e}", "<= 1e-05", diff <= 1e-5)

"""Chapter 5's sliders and live view: plain functions pytest tests, thin widget shells.

* `per_rank_memory(...)`: world size and ZeRO stage -> one rank's memory by category, the estimator's
  prediction beside what the meter measured in every rank, where that run exists (the notebook passes
  its measurements in; nothing is run when a slider moves).
* `watch_torchrun(...)`: runs `torchrun -m efftrain_lib.distributed_train --json` as a subprocess and
  draws each rank's loss and peak memory as the JSON lines arrive (live in JupyterLab, one picture at
  the end under nbval or in a terminal), with a time limit after which every process is stopped.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from efftrain_lib.launcher import free_port
from efftrain_lib.liveplot import CATEGORY_COLORS, resolve_mode
from efftrain_lib.memory import estimate_training_memory
from efftrain_lib.meter import MIB
from efftrain_lib.sharding_math import STAGE_NAMES, STAGES
from efftrain_lib.widgets import interactive_figure, render_png, wide

__all__ = ["RunWatch", "draw_per_rank", "draw_run", "per_rank_memory", "predicted_per_rank", "torchrun_command",
           "watch_torchrun"]

SHOWN = ("weights", "gradients", "optimizer_state", "activations")
WORLD_SIZES = (1, 2, 4, 8, 16, 32, 64)


def predicted_per_rank(config, stage: int, devices: int, *, batch_size: int = 1, seq_len: int = 16,
                       optimizer: str = "adamw") -> dict:
    """The estimator's peak breakdown for one rank (bytes by category, and "total")."""
    est = estimate_training_memory(config, batch_size=batch_size, seq_len=seq_len, optimizer=optimizer,
                                   devices=devices, sharding_stage=stage)
    out = {c: getattr(est, c) for c in SHOWN}
    out["total"] = est.peak_bytes
    return out


def draw_per_rank(ax, config, stage: int, devices: int, measured: dict | None = None, **estimate) -> None:
    """Stacked bars in MiB: predicted for (stage, devices), and measured beside it when
    measured[(stage, devices)] holds the meter's breakdown of that run (bytes by category)."""
    bars = {"predicted": predicted_per_rank(config, stage, devices, **estimate)}
    found = (measured or {}).get((stage, devices))
    if found is not None:
        bars["measured (meter, rank 0)"] = found
    for x, (label, parts) in enumerate(bars.items()):
        bottom = 0.0
        for category in SHOWN:
            height = parts.get(category, 0) / MIB
            ax.bar(x, height, bottom=bottom, width=0.55, color=CATEGORY_COLORS[category],
                   label=category.replace("_", " ") if x == 0 else None)
            bottom += height
        ax.annotate(f"{bottom:.1f} MiB", xy=(x, bottom), xytext=(0, 2), textcoords="offset points", ha="center",
                    fontsize=8)
    ax.set_xticks(range(len(bars)), list(bars))
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(0, 1.15 * max(sum(parts.get(c, 0) for c in SHOWN) for parts in bars.values()) / MIB)
    ax.set_ylabel("MiB per rank")
    note = "" if found is not None else " (no measured run: prediction only)"
    ax.set_title(f"{STAGE_NAMES[stage]}, {devices} rank{'s' if devices > 1 else ''}{note}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def per_rank_memory(config, measured: dict | None = None, **estimate):
    """Sliders: world size and ZeRO stage -> one rank's memory, predicted beside measured."""
    import ipywidgets as widgets

    def draw(ax, world_size, stage):
        draw_per_rank(ax, config, stage, world_size, measured, **estimate)

    wide_ = wide(20, label="7em")  # "world size" and "ZeRO stage" are clipped at the default 5em
    return interactive_figure(
        draw, "Per-rank memory by ZeRO stage",
        world_size=widgets.SelectionSlider(options=list(WORLD_SIZES), value=2, description="world size", **wide_),
        stage=widgets.SelectionSlider(options=list(STAGES), value=0, description="ZeRO stage", **wide_),
    )


# ------------------------------------------------------------------------------- the live view --
def torchrun_command(strategy: str = "ddp", steps: int = 10, nproc: int = 2, *extra: str) -> list[str]:
    """torchrun as this Python runs it (python -m torch.distributed.run: what the `torchrun` script
    runs), one node on 127.0.0.1 and a port free right now, training the tiny model."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
            "--master-addr=127.0.0.1", f"--master-port={free_port()}",
            "-m", "efftrain_lib.distributed_train", "--strategy", strategy, "--steps", str(steps), "--json", *extra]


def draw_run(axes, records: list[dict], title: str = "") -> None:
    """Two panels: each rank's loss, and each rank's peak memory, per step."""
    loss_ax, memory_ax = axes
    if records:
        steps = [r["step"] for r in records]
        for rank in range(len(records[0]["rank_losses"])):
            loss_ax.plot(steps, [r["rank_losses"][rank] for r in records], marker=".", label=f"rank {rank}")
            memory_ax.plot(steps, [r["peak_mib"][rank] for r in records], marker=".", label=f"rank {rank}")
        loss_ax.plot(steps, [r["loss"] for r in records], color="k", lw=1, label="global token mean")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    memory_ax.set_xlabel("step")
    memory_ax.set_ylabel("peak MiB (meter)")
    loss_ax.legend(fontsize=7)
    memory_ax.legend(fontsize=7)
    if title:
        loss_ax.set_title(title, fontsize=9)


@dataclass
class RunWatch:
    """What a watched run produced: the JSON records, the other output lines, the exit code."""

    records: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None
    seconds: float = 0.0


def parse_line(line: str) -> dict | None:
    """A step record from distributed_train --json, or None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if {"step", "loss", "rank_losses", "peak_mib"} <= set(record) else None


def watch_torchrun(command: list[str], timeout_s: float = 120.0, title: str = "", interactive=None) -> RunWatch:
    """Run `command` (see torchrun_command), drawing its step records as they arrive; stop every process
    it started (its process group) on a timeout, an error or Ctrl-C. Returns what it printed."""
    mode = resolve_mode(interactive)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    watch = RunWatch()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)  # its own process group: one kill stops the ranks too
    handle = None
    try:
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = timeout_s - (time.perf_counter() - start)
            if remaining <= 0:
                raise TimeoutError(f"{' '.join(command[:6])} ... did not finish within {timeout_s:g} s; stopped")
            if not selector.select(timeout=min(0.5, remaining)):
                continue
            line = process.stdout.readline()
            if not line:
                break
            record = parse_line(line)
            if record is None:
                watch.lines.append(line.rstrip())
                continue
            watch.records.append(record)
            if mode != "static":
                handle = _show(watch.records, title, handle)
        watch.returncode = process.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
        watch.seconds = time.perf_counter() - start
    if mode == "static" or handle is None:
        _show(watch.records, title, None)
    return watch


def _show(records: list[dict], title: str, handle):
    """Draw the records as a PNG: update the display handle in place, or display a new picture (only in
    a notebook: a terminal gets the printed lines)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return None
    if getattr(get_ipython(), "kernel", None) is None:
        return None
    png = render_png(draw_run, figsize=(8, 2.8), ncols=2, records=records, title=title)
    if handle is None:
        return display(Image(data=png), display_id=True)
    handle.update(Image(data=png))
    return handle

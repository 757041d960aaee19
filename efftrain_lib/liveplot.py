"""The live memory plot: memory within a step and peak per step, several runs on one axis.

Drawing lives in plain functions that take an Axes (`plot_step_timelines`, `plot_peaks`,
`plot_breakdowns`), so pytest can check them on an Agg figure. `LiveMemoryPlot` only decides
when to call them and where the picture goes:

* "widget"  - the matplotlib backend is ipympl (`%matplotlib widget`): drawn as in "display" mode. An
              ipympl canvas cannot show a picture while its cell runs: it draws only after a
              handshake with the kernel, which answers once training is over (seen in JupyterLab:
              a blank "Figure" box until the end, then a canvas wider than the output area);
* "display" - any other backend inside a Jupyter kernel: a PNG in an output that is updated in
              place through an IPython display handle (JupyterLab, VS Code, nbconvert all apply it);
* "static"  - no kernel (plain python, pytest), `interactive=False`, EFFTRAIN_LIVEPLOT=static
              (what CI should set), or a kernel launched by nbval / nbconvert / papermill (read
              from the parent process on Linux): nothing is drawn while training; `finish()`
              renders one figure. EFFTRAIN_LIVEPLOT=live turns the parent check off.

Redraws are throttled (`min_interval_s`) so that a live plot never dominates the step time.

    plot = LiveMemoryPlot(title="full fine-tuning vs LoRA")
    train(full, get_batch, steps=60, optimizer=opt1, meter=m1, on_step=plot.attach(m1, "full fine-tuning"))
    train(lora, get_batch, steps=60, optimizer=opt2, meter=m2, on_step=plot.attach(m2, "LoRA"))
    plot.finish()
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .meter import CATEGORIES, MIB, MemoryBreakdown, StepRecord, TimelineEvent

#: One colour per category, the same in every chart of the course.
CATEGORY_COLORS = {
    "weights": "#4c72b0",
    "gradients": "#dd8452",
    "optimizer_state": "#55a868",
    "activations": "#c44e52",
    "cast_weights": "#8172b3",
    "other": "#999999",
}

MODES = ("widget", "display", "static")
ENV_MODE = "EFFTRAIN_LIVEPLOT"  # "static" forces static figures (CI); "live" allows live ones


# ----------------------------------------------------------------------------------------------
# Plain drawing functions (no state, no display: testable on an Agg figure)
# ----------------------------------------------------------------------------------------------


def _check_mapping(name: str, runs) -> None:
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(f"{name} needs a non-empty dict {{label: ...}}, got {runs!r}")


def _new_axes(ax: Axes | None, figsize=(6.4, 3.6)) -> Axes:
    if ax is not None:
        return ax
    # Through pyplot on purpose: a notebook shows the figure at the end of the cell, as it
    # would for any matplotlib call (`_ = plot_peaks(...)` is all a cell needs).
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _source_note(ax: Axes, sources: Sequence[str]) -> None:
    """Every memory figure names where its numbers came from, under the axes."""
    unique = list(dict.fromkeys(s for s in sources if s))
    if unique:
        # Anchored under the x label's box, so it never overlaps the label whatever its size.
        ax.annotate(
            "source: " + " | ".join(unique),
            xy=(0, 0), xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -2), textcoords="offset points",
            fontsize=6, color="0.4", ha="left", va="top", annotation_clip=False,
        )


def _shown_categories(breakdowns: Sequence[MemoryBreakdown]) -> list[str]:
    """Categories that are non-zero somewhere: empty ones would only clutter the legend."""
    return [c for c in CATEGORIES if any(getattr(b, c) for b in breakdowns)]


def _phase_spans(timeline: Sequence[TimelineEvent]) -> list[tuple[str, int, int]]:
    """(phase, first event index, last event index) for each run of equal phases."""
    spans: list[tuple[str, int, int]] = []
    for event in timeline:
        if spans and spans[-1][0] == event.phase:
            spans[-1] = (event.phase, spans[-1][1], event.event_index)
        else:
            spans.append((event.phase, event.event_index, event.event_index))
    return spans


def plot_step_timelines(
    timelines: Mapping[str, Sequence[TimelineEvent]],
    ax: Axes | None = None,
    *,
    stacked: bool | None = None,
) -> Axes:
    """Memory within one step: forward builds activations up, backward releases them.

    timelines: {label: meter.timeline(step)}. With one run the default is a stack by category
    with the phases shaded; with several runs, one line of total bytes per run on the same axis,
    with a dot where each phase ends (the meter's marks).
    """
    _check_mapping("plot_step_timelines", timelines)
    for label, timeline in timelines.items():
        if not timeline:
            raise ValueError(f"the timeline of {label!r} is empty: record a step with the meter first")
    stacked = len(timelines) == 1 if stacked is None else stacked
    if stacked and len(timelines) != 1:
        raise ValueError("a stacked timeline shows exactly one run; pass stacked=False to overlay runs")
    ax = _new_axes(ax)
    sources = []
    if stacked:
        (label, timeline), = timelines.items()
        breakdowns = [event.breakdown for event in timeline]
        shown = _shown_categories(breakdowns)
        x = [event.event_index for event in timeline]
        ax.stackplot(
            x, *[[getattr(b, c) / MIB for b in breakdowns] for c in shown],
            labels=shown, colors=[CATEGORY_COLORS[c] for c in shown],
        )
        _shade_phases(ax, timeline)
        ax.set_title(f"memory within one step: {label}")
        sources = [b.source for b in breakdowns[:1]]
    else:
        for label, timeline in timelines.items():
            x = [event.event_index for event in timeline]
            y = [event.total_bytes / MIB for event in timeline]
            (line,) = ax.plot(x, y, label=label)
            ends = [last for _, _, last in _phase_spans(timeline)]
            ax.scatter([x[i] for i in ends], [y[i] for i in ends], s=12, color=line.get_color(), zorder=3)
            sources.append(timeline[0].breakdown.source)
        ax.set_title("memory within one step (dots: phase ends)")
    ax.set_xlabel("event within the step (tensor saved or released, gradient, mark)")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=7)
    _source_note(ax, sources)
    return ax


def _shade_phases(ax: Axes, timeline: Sequence[TimelineEvent]) -> None:
    for i, (phase, first, last) in enumerate(_phase_spans(timeline)):
        if phase in ("start", "end") or last == first:
            continue
        ax.axvspan(first, last, color="0.5", alpha=0.08 if i % 2 else 0.16, lw=0)
        ax.annotate(phase, xy=((first + last) / 2, 1), xycoords=("data", "axes fraction"),
                    xytext=(0, -2), textcoords="offset points", ha="center", va="top", fontsize=7)


def plot_peaks(
    peaks: Mapping[str, Sequence[int]],
    ax: Axes | None = None,
    *,
    source: str | Sequence[str] = "",
) -> Axes:
    """Peak bytes of every step over training, one line per run: {label: meter.peaks()}."""
    _check_mapping("plot_peaks", peaks)
    ax = _new_axes(ax)
    for label, values in peaks.items():
        ax.plot(range(len(values)), [v / MIB for v in values], marker=".", markersize=3, label=label)
    ax.set_title("peak memory per step")
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("MiB")
    top = max((max(values, default=0) for values in peaks.values()), default=0) / MIB
    ax.set_ylim(0, top * 1.12 or 1.0)  # head room: a flat peak line must not hide under the frame
    ax.legend(loc="lower right", fontsize=7)
    _source_note(ax, [source] if isinstance(source, str) else list(source))
    return ax


def plot_breakdowns(
    breakdowns: Mapping[str, MemoryBreakdown],
    ax: Axes | None = None,
    *,
    categories: Sequence[str] | None = None,
) -> Axes:
    """One stacked bar per run, one segment per category, the total written on top.

    categories: which to draw (default: those non-zero in some run, in the course's order).
    """
    _check_mapping("plot_breakdowns", breakdowns)
    for label, b in breakdowns.items():
        if not isinstance(b, MemoryBreakdown):
            raise ValueError(f"breakdowns[{label!r}] must be a MemoryBreakdown, got {type(b).__name__}")
    shown = list(categories) if categories is not None else _shown_categories(list(breakdowns.values()))
    unknown = [c for c in shown if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; choose from {list(CATEGORIES)}")
    ax = _new_axes(ax)
    labels = list(breakdowns)
    x = list(range(len(labels)))
    bottoms = [0.0] * len(labels)
    for category in shown:
        heights = [getattr(breakdowns[label], category) / MIB for label in labels]
        ax.bar(x, heights, bottom=bottoms, label=category, color=CATEGORY_COLORS[category], width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for xi, total in zip(x, bottoms):
        ax.annotate(f"{total:.2f} MiB", xy=(xi, total), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels)
    ax.set_ylabel("MiB")
    ax.set_title("memory by category")
    ax.set_ylim(0, max(bottoms) * 1.15 or 1.0)  # room for the totals above the bars
    ax.legend(loc="upper right", fontsize=7)
    _source_note(ax, [b.source for b in breakdowns.values()])
    return ax


# ----------------------------------------------------------------------------------------------
# Where the picture goes
# ----------------------------------------------------------------------------------------------


def _in_jupyter_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


BATCH_RUNNERS = ("pytest", "nbval", "nbconvert", "nbclient", "papermill")


def _launched_by_batch_runner() -> bool:
    """Best effort: is this kernel's parent a batch runner (pytest+nbval, nbconvert, papermill)?

    Nobody watches those runs, and nbval does not understand in-place display updates (it prints
    "unhandled iopub msg" for each). Linux only (reads /proc); elsewhere set EFFTRAIN_LIVEPLOT.
    """
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().replace(b"\0", b" ").decode(errors="replace").lower()
    except OSError:
        return False
    return any(name in parent for name in BATCH_RUNNERS)


def _backend() -> str:
    import matplotlib

    return str(matplotlib.get_backend()).lower()


def resolve_mode(interactive: bool | None = None) -> str:
    """"widget", "display" or "static" for this process (see the module docstring)."""
    if interactive is not None and not isinstance(interactive, bool):
        raise ValueError(f"interactive must be True, False or None, got {interactive!r}")
    if interactive is False:
        return "static"
    forced = os.environ.get(ENV_MODE, "").strip().lower()
    if forced not in ("", "static", "live"):
        raise ValueError(f"{ENV_MODE} must be 'static' or 'live', got {forced!r}")
    if forced == "static":  # CI's word is final
        return "static"
    if not _in_jupyter_kernel():
        return "static"  # nowhere to show a live picture: plain python, pytest, a terminal
    if interactive is None and forced != "live" and _launched_by_batch_runner():
        return "static"
    backend = _backend()
    return "widget" if ("ipympl" in backend or backend == "widget") else "display"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


@dataclass
class _Run:
    meter: object
    seen: int = 0
    peaks: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    last: StepRecord | None = None


class LiveMemoryPlot:
    """A figure that follows training: memory within the latest step, and peak per step.

    title:          the figure's title.
    panels:         which panels, in order: "timeline" (within-step) and/or "peaks" (per step).
    interactive:    None = decide (see the module docstring); False = static figure only;
                    True = live in any Jupyter kernel unless EFFTRAIN_LIVEPLOT=static.
    min_interval_s: the least time between two live redraws.
    """

    PANELS = ("timeline", "peaks")

    def __init__(
        self,
        title: str = "training memory",
        *,
        panels: Sequence[str] = PANELS,
        interactive: bool | None = None,
        min_interval_s: float = 1.0,
        figsize: tuple[float, float] | None = None,
    ):
        panels = tuple(panels)
        if not panels or any(p not in self.PANELS for p in panels) or len(set(panels)) != len(panels):
            raise ValueError(f"panels must be distinct names from {self.PANELS}, got {panels}")
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.title = title
        self.panels = panels
        self.mode = resolve_mode(interactive)
        self.min_interval_s = min_interval_s
        self.runs: dict[str, _Run] = {}
        self._last_draw = float("-inf")
        self._handle = None  # the IPython display handle (live modes)
        self.figure = self._make_figure(figsize or (5.2 * len(panels), 3.8))
        self.axes = dict(zip(panels, self.figure.subplots(1, len(panels), squeeze=False)[0]))

    @property
    def interactive(self) -> bool:
        return self.mode != "static"

    def _make_figure(self, figsize) -> Figure:
        # Not through pyplot, whatever the backend: pyplot would also show it at the end of the cell.
        return Figure(figsize=figsize, layout="constrained")

    # -- feeding it ---------------------------------------------------------------------------

    def attach(self, meter, label: str) -> Callable[[int, float], None]:
        """Follow `meter` as run `label`; returns the `on_step(step, loss)` for `training.train`."""
        if not hasattr(meter, "records"):
            raise ValueError(f"attach() needs an efftrain_lib.meter.MemoryMeter, got {type(meter).__name__}")
        if not isinstance(label, str) or not label:
            raise ValueError(f"attach() needs a non-empty string label, got {label!r}")
        if label in self.runs:
            raise ValueError(f"a run called {label!r} is already attached; labels name the lines")
        run = self.runs[label] = _Run(meter=meter, seen=len(meter.records))

        def on_step(step: int, loss: float) -> None:
            self._collect(label, run)
            run.losses.append(float(loss))
            self.update()

        return on_step

    def _collect(self, label: str, run: _Run) -> None:
        records = run.meter.records
        if len(records) < run.seen:  # the meter was reset: follow it from the start again
            run.seen = 0
        if len(records) == run.seen:
            raise RuntimeError(
                f"on_step for {label!r} was called but its meter recorded no new step: "
                "pass the same meter to train(..., meter=meter)"
            )
        run.peaks.extend(record.peak_bytes for record in records[run.seen :])
        run.seen = len(records)
        run.last = records[-1]

    def add_run(self, label: str, records: Sequence[StepRecord]) -> None:
        """Add a finished run (e.g. `meter.records`) without training live."""
        if not records:
            raise ValueError(f"add_run({label!r}) needs at least one StepRecord")
        if label in self.runs:
            raise ValueError(f"a run called {label!r} is already attached; labels name the lines")
        self.runs[label] = _Run(meter=None, seen=len(records), peaks=[r.peak_bytes for r in records], last=records[-1])

    # -- drawing ------------------------------------------------------------------------------

    def update(self, force: bool = False) -> bool:
        """Redraw if live and the last redraw is old enough (or `force`); True if it redrew."""
        if not self.interactive:
            return False
        now = time.perf_counter()
        if not force and now - self._last_draw < self.min_interval_s:
            return False
        self.draw()
        self._push()
        self._last_draw = time.perf_counter()  # after drawing: slow renders space themselves out
        return True

    def draw(self) -> Figure:
        """Draw the current data onto `self.figure` (no display) and return it."""
        runs = {label: run for label, run in self.runs.items() if run.last is not None}
        for ax in self.axes.values():
            ax.clear()
        if "timeline" in self.axes and runs:
            plot_step_timelines({label: run.last.timeline() for label, run in runs.items()}, self.axes["timeline"])
        if "peaks" in self.axes and runs:
            sources = [run.last.peak.source for run in runs.values()]
            plot_peaks({label: run.peaks for label, run in runs.items()}, self.axes["peaks"], source=sources)
        self.figure.suptitle(self.title)
        return self.figure

    def _push(self) -> None:
        """Send the drawn figure to the notebook (live modes only)."""
        from IPython.display import Image, display

        # "widget" (ipympl) too: its canvas would stay blank until the training cell ends.
        if self._handle is None:
            self._handle = display(Image(data=_png(self.figure)), display_id=True)
        else:
            self._handle.update(Image(data=_png(self.figure)))

    def show(self) -> None:
        """Draw what there is now and show it: in place when live, else one static picture.

        Returns None on purpose: a returned Figure would be displayed a second time by the
        notebook. The figure stays available as `plot.figure`.
        """
        if self.interactive:
            self.update(force=True)
            return
        self.draw()
        if _in_jupyter_kernel():
            from IPython.display import Image, display

            display(Image(data=_png(self.figure)))

    def finish(self) -> None:
        """The final picture, after training: `show()`, but an error if nothing was recorded."""
        if not any(run.last is not None for run in self.runs.values()):
            raise ValueError("nothing to draw: attach() a meter and train with it, or add_run() first")
        self.show()

    def savefig(self, path, **kwargs) -> None:
        self.draw().savefig(path, **kwargs)

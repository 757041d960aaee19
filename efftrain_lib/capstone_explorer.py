"""Chapter 7's live dashboard and budget slider: plain functions pytest tests, thin display shells.

* `Dashboard`: follows a plan's run (plan_runs.run_plan / run_in_group feed it records): the loss, each
  rank's measured peak per step against the budget line and the prediction, tokens per second, and a
  progress bar with the time left. Live in JupyterLab; one picture at the end under nbval or in a terminal.
* `budget_explorer(...)`: drag the budget down and watch the planner switch techniques on one by one
  (planner.frontier), with the predicted peak and step time of each plan, beside where the seed's ladder
  (mixed precision -> checkpointing -> accumulation -> LoRA) lands at the same budget.
"""

from __future__ import annotations

import math
import time

from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
from tqdm.auto import tqdm

from efftrain_lib.liveplot import resolve_mode
from efftrain_lib.meter import MIB
from efftrain_lib.planner import FrontierPoint, Plan, SearchSpace, format_bytes, frontier, seed_ladder
from efftrain_lib.widgets import interactive_figure, wide

__all__ = ["Dashboard", "budget_explorer", "draw_budget", "draw_dashboard", "eta_seconds", "plan_at", "switch_order"]

TECHNIQUE_ORDER = ("mixed precision", "LoRA", "accumulation", "checkpointing", "4-bit base", "sharding")


# ----------------------------------------------------------------------------------------------
# The dashboard
# ----------------------------------------------------------------------------------------------


def eta_seconds(records: list[dict]) -> float:
    """Seconds left at the pace so far (0 once every step is done; nan before the first)."""
    if not records:
        return math.nan
    last = records[-1]
    done = last["step"] + 1
    return last["elapsed"] / done * (last["steps"] - done)


def draw_dashboard(axes, records: list[dict], *, budget_bytes: float, predicted_bytes: int,
                   predicted_allocator: int | None = None, title: str = "") -> None:
    """Four panels on `axes`: loss per step; each rank's measured peak per step (MiB) against the budget and
    the predictions; tokens per second; progress with the time left."""
    loss_ax, memory_ax, speed_ax, progress_ax = axes
    steps = [r["step"] for r in records]
    if records:
        loss_ax.plot(steps, [r["loss"] for r in records], marker=".", color="k")
        for rank in range(len(records[0]["peak_bytes"])):
            memory_ax.plot(steps, [r["peak_bytes"][rank] / MIB for r in records], marker=".", label=f"rank {rank} (meter)")
        profiled = [(r["step"], a / MIB) for r in records for a in r.get("allocator_bytes") or () if a]
        if profiled:
            memory_ax.plot(*zip(*profiled), "x", color="C3", label="allocator (profiler)")
        speed_ax.plot(steps, [r["tokens_per_s"] for r in records], marker=".", color="C2")
    memory_ax.axhline(budget_bytes / MIB, color="C3", lw=1.5, label=f"budget {format_bytes(budget_bytes)}")
    memory_ax.axhline(predicted_bytes / MIB, color="0.4", ls="--", lw=1, label="predicted (accounting)")
    if predicted_allocator:
        memory_ax.axhline(predicted_allocator / MIB, color="0.4", ls=":", lw=1, label="predicted (allocator)")
    top = max([budget_bytes, predicted_bytes, predicted_allocator or 0] +
              [p for r in records for p in r["peak_bytes"]]) / MIB
    memory_ax.set_ylim(0, 1.25 * top)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss (global token mean)")
    memory_ax.set(xlabel="step", ylabel="MiB", title="peak memory per step")
    speed_ax.set(xlabel="step", ylabel="tokens/s", title="throughput")
    memory_ax.legend(fontsize=6, loc="lower right")
    total = records[-1]["steps"] if records else 1
    done = records[-1]["step"] + 1 if records else 0
    progress_ax.barh([0], [done / total], color="C0")
    progress_ax.barh([0], [1], fill=False, edgecolor="0.3")
    eta = eta_seconds(records)
    progress_ax.set_title(f"step {done}/{total}" + ("" if math.isnan(eta) else f", ETA {eta:.1f} s"), fontsize=9)
    progress_ax.set_xlim(0, 1)
    progress_ax.set_yticks([])
    progress_ax.set_xticks([0, 0.5, 1], ["0%", "50%", "100%"])
    if title:
        loss_ax.figure.suptitle(title, fontsize=10)


class Dashboard:
    """A run's dashboard (see draw_dashboard): `update(record)` per step (it is plan_runs' on_record),
    `finish()` at the end. A tqdm progress bar with the ETA follows the steps too."""

    def __init__(self, *, budget_bytes: float, predicted_bytes: int, predicted_allocator: int | None = None,
                 title: str = "", steps: int | None = None, interactive: bool | None = None,
                 min_interval_s: float = 0.5):
        self.budget_bytes, self.predicted_bytes = budget_bytes, predicted_bytes
        self.predicted_allocator, self.title = predicted_allocator, title
        self.mode = resolve_mode(interactive)
        self.min_interval_s = min_interval_s
        self.records: list[dict] = []
        self._bar = tqdm(total=steps, desc="plan run", leave=False)
        self._handle = None
        self._last_draw = -math.inf

    def update(self, record: dict) -> None:
        self.records.append(record)
        if self._bar.total is None:
            self._bar.total = record["steps"]
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{record['loss']:.3f}", peak=format_bytes(max(record["peak_bytes"])))
        if self.mode != "static" and time.perf_counter() - self._last_draw >= self.min_interval_s:
            self._show()
            self._last_draw = time.perf_counter()

    def draw(self) -> Figure:
        figure = Figure(figsize=(11, 2.9), layout="constrained")
        axes = figure.subplots(1, 4, gridspec_kw={"width_ratios": [3, 3, 3, 2]})
        draw_dashboard(axes, self.records, budget_bytes=self.budget_bytes, predicted_bytes=self.predicted_bytes,
                       predicted_allocator=self.predicted_allocator, title=self.title)
        return figure

    def _show(self) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:
            return
        if getattr(get_ipython(), "kernel", None) is None:
            return  # a terminal: the progress bar is the dashboard
        import io

        buffer = io.BytesIO()
        self.draw().savefig(buffer, format="png", dpi=80)
        image = Image(data=buffer.getvalue())
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)

    def finish(self) -> None:
        """Close the progress bar and show the final picture."""
        self._bar.close()
        if not self.records:
            raise ValueError("nothing to draw: no step was recorded (pass dashboard.update as on_record)")
        self._show()


# ----------------------------------------------------------------------------------------------
# The budget slider
# ----------------------------------------------------------------------------------------------


def plan_at(points: list[FrontierPoint], budget_bytes: float) -> FrontierPoint | None:
    """The frontier point choose_plan returns at this budget (None: nothing fits)."""
    return next((p for p in points if p.peak <= budget_bytes), None)


def switch_order(points: list[FrontierPoint]) -> list[tuple[str, float]]:
    """(technique, the largest budget at which the planner turns it on), in the order the planner
    switches techniques on while the budget goes down. A technique on at the largest budget is on
    because it makes the step faster, not because memory needs it: its budget is inf."""
    order: dict[str, float] = {}
    previous = math.inf
    for point in points:
        for technique in point.plan.techniques:
            order.setdefault(technique, previous)
        previous = point.peak
    return sorted(order.items(), key=lambda item: (-item[1], TECHNIQUE_ORDER.index(item[0])))


def _label(plan: Plan) -> str:
    return " + ".join(plan.techniques) or "nothing"


def draw_budget(axes, points: list[FrontierPoint], budget_bytes: float, *, seed: list | None = None,
                title: str = "") -> None:
    """Left: predicted step time against the budget (the planner's choice at every budget: a staircase),
    the current budget as a line. Right: at this budget, the planner's plan and the seed's ladder's, their
    predicted peaks against the budget. seed: seed_ladder(...) at this budget (optional)."""
    time_ax, plan_ax = axes
    lowest, highest = points[-1].peak, points[0].peak
    xs, ys = [highest * 1.5], [points[0].time]
    for point in points:
        xs += [point.peak, point.peak]
        ys += [ys[-1], point.time]
    time_ax.plot([x / MIB for x in xs], ys, color="C0", label="planner")
    switched = dict(switch_order(points))
    for before, point in zip(points, points[1:]):  # label a technique where it first switches on, going down
        new = [t for t in point.plan.techniques if switched.get(t) == before.peak and t not in before.plan.techniques]
        if new:
            time_ax.annotate("+" + ", ".join(new), (point.peak / MIB, point.time), fontsize=7, xytext=(3, 3),
                             textcoords="offset points")
    time_ax.axvline(budget_bytes / MIB, color="C3", lw=1.5, label="budget")
    time_ax.axvspan(lowest / MIB / 1.5, lowest / MIB, color="0.85", label="nothing fits")
    time_ax.set_xscale("log")
    time_ax.set_xlim(lowest / MIB / 1.5, highest * 1.5 / MIB)
    time_ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    time_ax.xaxis.set_major_formatter(ScalarFormatter())
    time_ax.xaxis.set_minor_formatter(NullFormatter())
    time_ax.set(xlabel="budget per device (MiB)", ylabel="predicted step time (x plain)",
                title=title or "the planner's choice at every budget")
    time_ax.legend(fontsize=7, loc="upper right")
    chosen = plan_at(points, budget_bytes)
    bars = [("planner", chosen.plan, chosen.peak, chosen.time) if chosen else ("planner", None, 0, math.nan)]
    if seed:
        plan, peak, t, fits = seed[-1]
        bars.append(("seed's ladder" + ("" if fits else " (never fits)"), plan, peak, t))
    for i, (name, plan, peak, t) in enumerate(bars):
        plan_ax.barh(i, peak / MIB, height=0.45, color="C0" if i == 0 else "C1")
        text = "nothing fits" if plan is None else f"x{t:.2f} time: {_label(plan)}"
        plan_ax.text(0, i + 0.3, f"{name}: {text}", fontsize=7, va="bottom")
    plan_ax.axvline(budget_bytes / MIB, color="C3", lw=1.5)
    plan_ax.set_yticks([])
    plan_ax.set_ylim(-0.5, len(bars) - 0.2)
    plan_ax.set_xlim(0, max([budget_bytes] + [b[2] for b in bars]) * 1.15 / MIB)
    plan_ax.set(xlabel="predicted peak per device (MiB)", title=f"at {format_bytes(budget_bytes)} per device")


def budget_explorer(model, *, devices: int = 1, effective_batch: int = 8, seq_len: int | None = None,
                    costs=None, steps: int = 40):
    """A budget slider (and a choice of fine-tuning) over the planner's frontier for this model."""
    import ipywidgets as widgets

    spaces = {"LoRA and QLoRA allowed": SearchSpace(), "full fine-tuning only": SearchSpace(finetuning=("full",))}
    frontiers = {name: frontier(model, devices, effective_batch, seq_len=seq_len, space=space, costs=costs)
                 for name, space in spaces.items()}
    lowest = min(points[-1].peak for points in frontiers.values())
    highest = max(points[0].peak for points in frontiers.values())
    budgets = [lowest * 0.9 * (highest * 1.2 / (lowest * 0.9)) ** (i / (steps - 1)) for i in range(steps)]

    def draw(axes, budget, finetuning):
        points = frontiers[finetuning]
        seed = seed_ladder(model, budget, devices, effective_batch, seq_len=seq_len, costs=costs)
        draw_budget(axes, points, budget, seed=seed, title=finetuning)

    return interactive_figure(
        draw, "Budget slider: the planner's plan and the seed's ladder at each budget", figsize=(10, 3.4), ncols=2,
        budget=widgets.SelectionSlider(options=[(format_bytes(b), b) for b in budgets], value=budgets[steps // 2],
                                       description="budget", **wide(12, label="5em")),
        finetuning=widgets.Dropdown(options=list(spaces), description="fine-tuning", **wide(22, label="6em")),
    )

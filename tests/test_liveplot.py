"""Tests of efftrain_lib.liveplot: the drawing functions on an Agg figure, and the live plot's
callback, throttling and static fallback (no Jupyter kernel needed: display is faked)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: tests never open a window

import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure

from efftrain_lib import liveplot
from efftrain_lib.liveplot import (
    CATEGORY_COLORS,
    LiveMemoryPlot,
    plot_breakdowns,
    plot_peaks,
    plot_step_timelines,
    resolve_mode,
)
from efftrain_lib.meter import MIB, SOURCE_CPU, MemoryBreakdown, MemoryMeter, measure_step
from efftrain_lib.models import TinyConfig, TinyTransformer
from efftrain_lib.training import train

SMALL = TinyConfig(vocab_size=32, hidden_size=32, n_layers=2, n_heads=2, ffn_dim=64, max_seq_len=16)


def get_batch(step: int):
    generator = torch.Generator().manual_seed(step)
    inputs = torch.randint(0, SMALL.vocab_size, (4, SMALL.max_seq_len), generator=generator)
    return inputs, torch.roll(inputs, -1, dims=1)


def new_run(freeze_mlp: bool = False):
    torch.manual_seed(0)
    model = TinyTransformer(SMALL)
    for name, param in model.named_parameters():
        param.requires_grad_(not (freeze_mlp and "mlp" in name))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer


@pytest.fixture(scope="module")
def records():
    """One measured step of a full and a frozen-MLP model."""
    out = {}
    for label, freeze in (("full", False), ("frozen mlp", True)):
        model, optimizer = new_run(freeze)
        out[label] = measure_step(model, optimizer, get_batch(0))
    return out


def axes() -> "matplotlib.axes.Axes":
    return Figure().add_subplot()


# ----------------------------------------------------------------------------------------------
# Drawing functions
# ----------------------------------------------------------------------------------------------


def test_overlaid_timelines_draw_one_line_per_run(records):
    ax = plot_step_timelines({label: r.timeline() for label, r in records.items()}, axes())
    assert [line.get_label() for line in ax.lines] == ["full", "frozen mlp"]
    full_line = ax.lines[0]
    timeline = records["full"].timeline()
    assert list(full_line.get_xdata()) == [e.event_index for e in timeline]
    assert max(full_line.get_ydata()) == pytest.approx(records["full"].peak_bytes / MIB)
    # one set of dots per run, at the end of each phase: start, forward, backward, optimizer step, end
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in dots] == [5, 5]
    assert any(SOURCE_CPU in t.get_text() for t in ax.texts)


def test_single_timeline_is_stacked_by_category(records):
    timeline = records["full"].timeline()
    ax = plot_step_timelines({"full": timeline}, axes())
    stacks = [c for c in ax.collections if isinstance(c, PolyCollection)]
    # weights, gradients, optimizer state and activations are non-zero somewhere; no cast weights
    assert len(stacks) == 4
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["weights", "gradients", "optimizer_state", "activations"]
    assert ax.get_ylim()[1] >= records["full"].peak_bytes / MIB
    assert {"forward", "backward"} <= {t.get_text() for t in ax.texts}  # shaded phases are named


def test_timeline_input_is_checked(records):
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_step_timelines({})
    with pytest.raises(ValueError, match="empty"):
        plot_step_timelines({"x": []})
    with pytest.raises(ValueError, match="stacked=False"):
        plot_step_timelines({k: r.timeline() for k, r in records.items()}, stacked=True)


def test_peaks_draw_one_line_per_run():
    ax = plot_peaks({"a": [MIB, 2 * MIB, 2 * MIB], "b": [MIB // 2] * 3, "c": [3 * MIB]}, axes(), source=SOURCE_CPU)
    assert [line.get_label() for line in ax.lines] == ["a", "b", "c"]
    assert list(ax.lines[0].get_ydata()) == [1.0, 2.0, 2.0]
    assert ax.get_ylabel() == "MiB"


def test_breakdowns_draw_stacked_bars():
    a = MemoryBreakdown(weights=MIB, gradients=MIB, optimizer_state=2 * MIB, activations=4 * MIB)
    b = MemoryBreakdown(weights=MIB, gradients=MIB // 4, optimizer_state=MIB // 2, activations=2 * MIB, cast_weights=MIB // 2)
    ax = plot_breakdowns({"full": a, "LoRA": b}, axes())
    # 2 runs x 5 categories non-zero in some run (weights .. cast_weights; 'other' is zero everywhere)
    assert len(ax.patches) == 10
    assert [c.get_label() for c in ax.containers] == ["weights", "gradients", "optimizer_state", "activations", "cast_weights"]
    activations = ax.containers[3]
    assert [bar.get_height() for bar in activations] == [4.0, 2.0]
    assert [bar.get_y() for bar in activations] == [4.0, 1.75]  # stacked on the categories below
    assert activations.patches[0].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(CATEGORY_COLORS["activations"]))
    texts = {t.get_text() for t in ax.texts}
    assert {"8.00 MiB", "4.25 MiB"} <= texts
    assert any(SOURCE_CPU in t for t in texts)


def test_breakdowns_input_is_checked():
    with pytest.raises(ValueError, match="MemoryBreakdown"):
        plot_breakdowns({"x": 3})
    with pytest.raises(ValueError, match="unknown categories"):
        plot_breakdowns({"x": MemoryBreakdown(weights=1)}, categories=["weights", "kv_cache"])


# ----------------------------------------------------------------------------------------------
# The live plot
# ----------------------------------------------------------------------------------------------


def test_live_callback_in_non_interactive_mode(capfd):
    plot = LiveMemoryPlot(title="full vs frozen mlp", interactive=False)
    assert plot.mode == "static" and not plot.interactive
    for label, freeze in (("full", False), ("frozen mlp", True)):
        model, optimizer = new_run(freeze)
        meter = MemoryMeter()
        train(model, get_batch, steps=3, optimizer=optimizer, meter=meter,
              on_step=plot.attach(meter, label), progress=False)
        assert plot.runs[label].peaks == meter.peaks()
        assert plot.runs[label].losses and len(plot.runs[label].losses) == 3
    assert plot.update() is False  # static: nothing drawn while training
    plot.finish()
    timeline_ax, peaks_ax = plot.axes["timeline"], plot.axes["peaks"]
    assert [line.get_label() for line in timeline_ax.lines] == ["full", "frozen mlp"]
    assert [len(line.get_xdata()) for line in peaks_ax.lines] == [3, 3]
    assert plot.figure.get_suptitle() == "full vs frozen mlp"
    assert liveplot._png(plot.figure)[:8] == b"\x89PNG\r\n\x1a\n"
    captured = capfd.readouterr()
    assert captured.err == ""


class FakeHandle:
    def __init__(self):
        self.updates = 0

    def update(self, obj):
        self.updates += 1


def test_live_display_mode_redraws_in_place_and_throttles(monkeypatch):
    shown = []
    handle = FakeHandle()

    def fake_display(obj, display_id=False):
        shown.append(obj)
        return handle

    monkeypatch.setattr(liveplot, "_in_jupyter_kernel", lambda: True)
    monkeypatch.setattr(liveplot, "_launched_by_batch_runner", lambda: False)
    monkeypatch.setattr(liveplot, "_backend", lambda: "module://matplotlib_inline.backend_inline")
    monkeypatch.setattr("IPython.display.display", fake_display)
    monkeypatch.delenv(liveplot.ENV_MODE, raising=False)

    plot = LiveMemoryPlot(panels=("peaks",), min_interval_s=3600)
    assert plot.mode == "display"
    model, optimizer = new_run()
    meter = MemoryMeter()
    train(model, get_batch, steps=3, optimizer=optimizer, meter=meter, on_step=plot.attach(meter, "full"), progress=False)
    assert len(shown) == 1 and handle.updates == 0  # first step drew; the next two were throttled
    assert shown[0].data[:4] == b"\x89PNG"
    plot.finish()
    assert len(shown) == 1 and handle.updates == 1  # the final picture replaces the live one
    assert len(plot.axes["peaks"].lines[0].get_xdata()) == 3


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv(liveplot.ENV_MODE, raising=False)
    assert resolve_mode(None) == "static"  # pytest runs no Jupyter kernel
    assert resolve_mode(False) == "static"
    monkeypatch.setattr(liveplot, "_in_jupyter_kernel", lambda: True)
    monkeypatch.setattr(liveplot, "_launched_by_batch_runner", lambda: False)
    monkeypatch.setattr(liveplot, "_backend", lambda: "module://ipympl.backend_nbagg")
    assert resolve_mode(None) == "widget"
    monkeypatch.setattr(liveplot, "_backend", lambda: "module://matplotlib_inline.backend_inline")
    assert resolve_mode(None) == "display"
    assert resolve_mode(False) == "static"
    # A kernel started by nbval / nbconvert: nobody watches, draw once at the end...
    monkeypatch.setattr(liveplot, "_launched_by_batch_runner", lambda: True)
    assert resolve_mode(None) == "static"
    assert resolve_mode(True) == "display"  # ...unless asked explicitly
    monkeypatch.setenv(liveplot.ENV_MODE, "live")
    assert resolve_mode(None) == "display"
    monkeypatch.setenv(liveplot.ENV_MODE, "static")  # what CI sets: final, even over True
    assert resolve_mode(None) == "static"
    assert resolve_mode(True) == "static"
    monkeypatch.setenv(liveplot.ENV_MODE, "sometimes")
    with pytest.raises(ValueError, match=liveplot.ENV_MODE):
        resolve_mode(None)
    with pytest.raises(ValueError, match="interactive"):
        resolve_mode("yes")


def test_live_plot_misuse_gives_clear_errors():
    plot = LiveMemoryPlot(interactive=False)
    meter = MemoryMeter()
    with pytest.raises(ValueError, match="nothing to draw"):
        plot.finish()
    with pytest.raises(ValueError, match="MemoryMeter"):
        plot.attach(object(), "x")
    on_step = plot.attach(meter, "full")
    with pytest.raises(ValueError, match="already attached"):
        plot.attach(meter, "full")
    with pytest.raises(RuntimeError, match="meter=meter"):
        on_step(0, 1.0)  # the loop ran without the meter: say how to fix it
    with pytest.raises(ValueError, match="panels"):
        LiveMemoryPlot(panels=("timeline", "losses"))


def test_add_run_draws_finished_runs(records):
    plot = LiveMemoryPlot(interactive=False, panels=("timeline",))
    for label, record in records.items():
        plot.add_run(label, [record])
    plot.finish()
    assert [line.get_label() for line in plot.axes["timeline"].lines] == list(records)

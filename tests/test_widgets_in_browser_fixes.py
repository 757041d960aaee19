"""Fixes found by scripts/check_widgets_in_browser.py (a real JupyterLab in headless Chromium).

That script needs a browser and is run by hand; these tests pin each fix without one.
"""

import itertools
import json

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from efftrain_lib import lora_explorer as ex  # noqa: E402
from efftrain_lib.drill import ProgressStore, quiz  # noqa: E402

pytest.importorskip("ipywidgets")


def _bank(tmp_path, ids=("t1", "t2", "t3")):
    text = "".join(
        f'[[card]]\nid = "{cid}"\nchapter = "lora"\ndifficulty = 1\n'
        f'question = "Q {cid}?"\nanswer = "A {cid}."\n\n'
        for cid in ids
    )
    path = tmp_path / "bank.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_self_grade_buttons_record_then_show_the_next_card(tmp_path):
    progress = tmp_path / "p.json"
    q = quiz("lora", bank=_bank(tmp_path), progress=progress)
    _ = q.widget  # build the widget: the buttons exist from here on
    q.got_button.click()  # not revealed yet: nothing happens
    assert q.session.current.id == "t1" and q.session.results == []
    q.reveal_button.click()
    q.got_button.click()
    assert q.session.current.id == "t2" and q.session.results == [("t1", True)]
    assert "Recorded t1: got it." in q.feedback.value and q.answer_html.value == ""
    assert q.score_label.value.startswith("Score: 1/1")
    assert q.got_button.disabled and not q.reveal_button.disabled  # the new card starts unrevealed
    q.reveal_button.click()
    assert q.feedback.value == ""  # the note belongs to the card that followed the grade only
    q.missed_button.click()
    assert q.session.current.id == "t3" and q.score_label.value.startswith("Score: 1/2")
    assert "Recorded t2: missed" in q.feedback.value
    q.reveal_button.click()
    q.missed_button.click()
    assert q.session.done and "All cards done" in q.question_label.value
    assert "Recorded t3: missed" in q.feedback.value
    assert q.next_button.disabled and q.got_button.disabled
    saved = json.loads(progress.read_text())
    assert {"t1", "t2", "t3"} <= set(json.dumps(saved).replace('"', " ").split())


def test_api_self_grade_still_stays_on_the_card(tmp_path):
    q = quiz("lora", bank=_bank(tmp_path), progress=ProgressStore.in_memory())
    _ = q.widget  # build the widget: the buttons exist from here on
    q.reveal()
    q.got_it()
    assert q.session.current.id == "t1" and q.session.graded


def test_update_norms_are_averaged_so_rslora_is_flat():
    ranks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    norms = ex.update_norm_by_rank(ranks, alpha=16)
    rs = norms["alpha / sqrt(r) (rsLoRA)"]
    standard = norms["alpha / r"]
    assert max(rs) / min(rs) < 1.4  # measured 1.32 (r = 256 fills the layer); one draw per rank gave ~2
    assert all(a > b for a, b in itertools.pairwise(standard))  # alpha / r falls at every step
    assert ex.update_norm_by_rank(ranks, alpha=16) == norms  # seeded
    with pytest.raises(ValueError, match="trials"):
        ex.update_norm_by_rank(ranks, alpha=16, trials=0)


def test_explorers_render_pngs_without_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    png = ex.render_png(lambda ax, alpha: ex.draw_update_norms(ax, [1, 4, 16], alpha, ymax=5.0), alpha=16.0)
    assert png.startswith(b"\x89PNG") and plt.get_fignums() == before


def test_spectrum_plot_names_the_layer_and_controls_fit_their_labels():
    spectra = {"layers.3.self_attn.v_proj": {"LoRA": torch.ones(8), "full": torch.ones(16)}}
    box = ex.spectrum_explorer(spectra, rank=8)
    controls = box.children[0].children
    dropdown, top = controls[0], controls[1]
    assert str(len("layers.3.self_attn.v_proj")) in dropdown.layout.width
    assert (top.min, top.max, top.value) == (4, 16, 16)
    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    ex.draw_spectra(ax, spectra["layers.3.self_attn.v_proj"], 8, title="layers.3.self_attn.v_proj: x")
    assert ax.get_title().startswith("layers.3.self_attn.v_proj")
    shape = ex.rank_explorer().children[0].children[0]
    assert shape.layout.width and shape.style.description_width == "5em"


def test_explorers_say_what_they_are_where_widgets_do_not_draw():
    # JupyterLab shows this text for a saved notebook's widget outputs until the cells are run.
    for box, name in ((ex.rank_explorer(), "Rank explorer"), (ex.scaling_explorer(), "Scaling explorer")):
        text = box._repr_mimebundle_()["text/plain"]
        assert text.startswith(name) and "JupyterLab" in text and len(text) <= 110


def test_live_plot_under_ipympl_pushes_pictures_while_training(monkeypatch):
    # In JupyterLab an ipympl canvas stays blank until the training cell ends (its frontend waits
    # for the busy kernel): under `%matplotlib widget` the live plot updates a PNG in place instead.
    import matplotlib.pyplot as plt

    from efftrain_lib import liveplot
    from efftrain_lib.meter import MemoryMeter
    from efftrain_lib.models import TinyConfig, TinyTransformer
    from efftrain_lib.training import train

    shown, updates = [], []

    class Handle:
        def update(self, obj):
            updates.append(obj)

    def fake_display(obj, display_id=False):
        shown.append(obj)
        return Handle()

    monkeypatch.setattr(liveplot, "_in_jupyter_kernel", lambda: True)
    monkeypatch.setattr(liveplot, "_launched_by_batch_runner", lambda: False)
    monkeypatch.setattr(liveplot, "_backend", lambda: "module://ipympl.backend_nbagg")
    monkeypatch.setattr("IPython.display.display", fake_display)
    monkeypatch.delenv(liveplot.ENV_MODE, raising=False)

    figures_before = plt.get_fignums()
    plot = liveplot.LiveMemoryPlot(panels=("peaks",), min_interval_s=0)
    assert plot.mode == "widget" and plot.interactive
    torch.manual_seed(0)
    model = TinyTransformer(TinyConfig(vocab_size=16, hidden_size=16, n_layers=1, n_heads=2, ffn_dim=32, max_seq_len=8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meter = MemoryMeter()

    def get_batch(step):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, 16, (2, 8), generator=g)
        return x, x

    train(model, get_batch, steps=3, optimizer=optimizer, meter=meter,
          on_step=plot.attach(meter, "run"), progress=False)
    plot.finish()
    assert len(shown) == 1 and len(updates) == 3  # one output, redrawn in place after every step
    assert all(obj.data[:4] == b"\x89PNG" for obj in shown + updates)
    assert plt.get_fignums() == figures_before  # nothing left for pyplot to show again


def test_memory_calculator_labels_fit_their_names():
    # In the browser "batch_size" showed as "batch_s..." at ipywidgets' 5em description width.
    from efftrain_lib import memory_explorer

    box = memory_explorer.memory_calculator()
    controls = [c for c in box.children[0].children if getattr(c, "description", "")]
    named = [c for c in controls if type(c).__name__ != "Checkbox"]
    assert {"batch_size", "seq_len", "custom ffn"} <= {c.description for c in named}
    for control in named:
        width = control.style.description_width
        assert width.endswith("em") and float(width[:-2]) >= 0.65 * len(control.description), control.description


def test_explorers_share_one_png_shell_and_leave_pyplot_alone():
    # Every explorer redraws a PNG through efftrain_lib.widgets: with `%matplotlib widget` a pyplot
    # figure per slider move (the accumulation explorer's plt.show()) piles up ipympl canvases.
    import matplotlib.pyplot as plt

    from efftrain_lib import widgets

    before = plt.get_fignums()
    png = widgets.render_png(lambda axes, n: [ax.plot(range(n)) for ax in axes], ncols=2, n=3)
    assert png.startswith(b"\x89PNG") and plt.get_fignums() == before
    import ipywidgets

    box = widgets.interactive_figure(lambda ax, n: ax.plot(range(n)), "Demo explorer",
                                     n=ipywidgets.IntSlider(value=3, min=1, max=5))
    assert repr(box).startswith("Demo explorer (controls: n;") and plt.get_fignums() == before
    assert widgets.WIDE["style"]["description_width"] == "5em"

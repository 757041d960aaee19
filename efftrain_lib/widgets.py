"""The explorers' shared widget shell: controls above a picture that is redrawn as PNG bytes.

Every chapter's explorer is `interactive_figure(draw, summary, **controls)` around a plain drawing
function `draw(ax, **values)` that pytest tests (nbval never renders a widget).

Why PNGs: a pyplot-free Figure rendered to PNG shows the same under every matplotlib backend; with
`%matplotlib widget` (ipympl) a pyplot figure per slider move would pile up interactive canvases.
"""

from __future__ import annotations

import functools
import io

from matplotlib.figure import Figure


def wide(chars: int = 34, label: str = "5em") -> dict:
    """Layout for a control wide enough for its longest option (ipywidgets' default clips them);
    label: the width of its description (widen it for names like "batch_size", clipped at 5em)."""
    return {"layout": {"width": f"calc({chars}ch + {label} + 4em)"}, "style": {"description_width": label}}


#: The usual control layout: `widgets.IntSlider(..., **WIDE)`.
WIDE = wide()


def render_png(draw, figsize=(7, 3.5), ncols: int = 1, **values) -> bytes:
    """draw(ax, **values) on a figure of its own (ax is a list of axes when ncols > 1), as PNG bytes."""
    fig = Figure(figsize=figsize, layout="constrained" if ncols > 1 else None)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    draw(axes[0] if ncols == 1 else list(axes), **values)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


@functools.cache
def _explorer_box_class():
    import ipywidgets as widgets

    class ExplorerBox(widgets.VBox):
        """A VBox whose text form (what a notebook saved without a widget frontend shows, e.g. before
        its cells are run) says what it is instead of "VBox(children=(interactive(...".
        """

        def __init__(self, children, summary: str):
            super().__init__(children)
            self.summary = summary

        def __repr__(self) -> str:
            return self.summary

    return ExplorerBox


def explorer_box(children, summary: str):
    """A VBox of `children` whose text form is `summary`."""
    return _explorer_box_class()(children, summary)


def interactive_figure(draw, summary: str, figsize=(7, 3.5), ncols: int = 1, **controls):
    """Controls (ipywidgets, by the name `draw` takes them) above a picture drawn by draw(ax, **values).

    The picture is redrawn on every change; the old one stays up until the new one is ready.
    """
    import ipywidgets as widgets
    from IPython.display import Image, display

    out = widgets.Output()

    def redraw(**values):
        png = render_png(draw, figsize=figsize, ncols=ncols, **values)
        with out:
            out.clear_output(wait=True)
            display(Image(data=png))

    text = f"{summary} (controls: {', '.join(controls)}; run the cell in JupyterLab to use them)"
    return explorer_box([widgets.interactive(redraw, **controls), out], text)

"""The mock interview in a notebook: mock_interview(20) is a quiz with a visible countdown.

    from efftrain_lib.drill.mock_widget import mock_interview
    mock_interview(20)            # press Start: the clock runs, missed questions come first

A thin ipywidgets shell around efftrain_lib.drill.mock.MockSession (the logic, tested without a browser):
the drill's Quiz plus a clock (minutes:seconds and a bar, refreshed every second by an ipywidgets.Play
ticker: its timer runs in the browser, the time left is read from the kernel's clock), a code box and a
"Grade my code" button for whiteboard cards, and the report (score by topic, topics to revisit) at the end.
Anywhere without a widget frontend (nbval, a terminal IPython) it shows a text summary. This module imports
the generators, hence torch; `python -m efftrain_lib.drill --mock MINUTES` is the same in a terminal.
"""

from __future__ import annotations

import html
import os
import time
from typing import Callable

from efftrain_lib.drill.bank import cards_for, chapter_key, load_bank
from efftrain_lib.drill.generators import GENERATORS
from efftrain_lib.drill.mock import MockSession, minutes_text
from efftrain_lib.drill.progress import ProgressError, ProgressStore
from efftrain_lib.drill.widget import Quiz, html_text

__all__ = ["MockQuiz", "mock_interview"]


class MockQuiz(Quiz):
    """The drill's Quiz over a MockSession, with a clock that starts on start() (the Start button)."""

    session: MockSession

    def __init__(self, session: MockSession, chapter: str = "all", warning: str = ""):
        super().__init__(session, chapter=chapter, warning=warning)

    # -- actions (the buttons and the ticker call these) ----------------------------------------
    def start(self) -> None:
        """Start the clock (once) and show the first question."""
        self.session.countdown.start()
        if self._box is not None:
            self.ticker.playing = True
        self._refresh()

    def tick(self) -> None:
        """What the ticker calls every second: refresh the clock; stop ticking once the time is up."""
        if self._box is not None and self.session.countdown.expired:
            self.ticker.playing = False
        self._refresh()

    def check_code(self, code: str | None = None):
        """Grade the whiteboard card's code (the text box's by default); a problem is shown, never raised."""
        s = self.session
        if s.done or s.graded or not s.current.is_whiteboard or not s.countdown.started:
            return None
        if code is None:
            code = self.code_box.value if self._box is not None else ""
        try:
            self._recording(lambda: s.check_code(code))
            self._note = ""
        except ValueError as e:
            self._note = f"Not graded: {e}."
        self._refresh()
        return s.last_report

    def next(self):
        if not self.session.countdown.started:
            return self.session.current
        card = super().next()
        if self._box is not None:
            self.code_box.value = ""
        return card

    # -- text -----------------------------------------------------------------------------------
    def clock_text(self) -> str:
        c = self.session.countdown
        if not c.started:
            return f"{minutes_text(self.session.minutes)}: press Start"
        if self.session.done:
            return "over"
        return "time is up: finish this answer" if c.expired else f"{c.text()} left"

    def score_text(self) -> str:
        correct, answered = self.session.score
        return f"Score: {correct}/{answered} · question {self.session.index + 1}"

    def text_summary(self) -> str:
        s = self.session
        lines = [f"Mock interview: {self.chapter}, {minutes_text(s.minutes)} ({self.clock_text()})"]
        if self.warning:
            lines.append(f"Warning: {self.warning}")
        if s.done:
            lines.append(s.report())
        elif s.countdown.started:
            lines.append(s.header())
            lines.append("Q: " + s.current.question)
        else:
            lines.append(f"{len(s.queue)} questions ready, missed ones first; generated ones draw new numbers.")
        lines.append("(Text view: in JupyterLab this is an interactive mock interview with a countdown. "
                     f"In a terminal: python -m efftrain_lib.drill --mock {s.minutes:g})")
        return "\n".join(lines)

    # -- the widget -----------------------------------------------------------------------------
    def _build(self) -> None:
        import ipywidgets as w

        super()._build()
        self.clock_label = w.HTML()
        self.clock_bar = w.FloatProgress(value=1.0, min=0.0, max=1.0, layout=w.Layout(width="20em"))
        self.start_button = w.Button(description="Start", button_style="primary")
        # The Play widget's timer runs in the browser's model, so a hidden one still ticks once playing.
        self.ticker = w.Play(value=0, min=0, max=10**9, step=1, interval=1000, layout=w.Layout(display="none"))
        self.code_box = w.Textarea(placeholder="import torch ...  (the whole module: imports and the exercise's names)",
                                   layout=w.Layout(width="100%", height="14em"))
        self.grade_button = w.Button(description="Grade my code", button_style="primary")
        self.start_button.on_click(lambda _: self.start())
        self.ticker.observe(lambda _: self.tick(), names="value")
        self.grade_button.on_click(lambda _: self.check_code())
        self.code_row = w.VBox([self.code_box, self.grade_button])
        self.buttons_row = next(c for c in self._box.children if self.reveal_button in getattr(c, "children", ()))
        self.clock_row = w.HBox([self.start_button, self.clock_label, self.clock_bar, self.ticker])
        children = list(self._box.children)
        children.insert(1, self.clock_row)  # under the header
        children.insert(children.index(self.numeric_row) + 1, self.code_row)
        self._box.children = children
        self._refresh()

    def _refresh(self) -> None:
        super()._refresh()
        if self._box is None or not hasattr(self, "clock_row"):
            return  # Quiz._build refreshes once before the clock exists
        s, c = self.session, self.session.countdown
        card = s.current
        asking = c.started and card is not None
        colour = "#cf222e" if c.started and c.remaining < 60 else "inherit"
        self.clock_label.value = (f'<b style="font-size: 1.3em; color: {colour}; font-variant-numeric: tabular-nums">'
                                  f'{html.escape(self.clock_text())}</b>')
        self.clock_bar.value = c.fraction_left
        self.start_button.layout.display = "none" if c.started else None
        if not c.started:  # the first question's id would give it away
            self.header_label.value = f"<b>Mock interview: {html.escape(self.chapter)}, {minutes_text(s.minutes)}</b>"
        self.buttons_row.layout.display = None if asking else "none"
        self.question_label.layout.display = None if asking or s.done else "none"
        if not asking:
            self.numeric_row.layout.display = "none"
        self.code_row.layout.display = None if asking and card.is_whiteboard and not s.graded else "none"
        if s.last_report is not None:
            self.feedback.value = html_text(s.last_report.to_text())
        if s.done:
            self.question_label.value = html_text(s.report())


def mock_interview(
    minutes: float = 20,
    chapter: str = "all",
    *,
    progress: str | os.PathLike | ProgressStore | None = None,
    seed: int | None = None,
    bank: str | os.PathLike | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> MockQuiz:
    """A timed mock interview over `chapter`'s cards ("all": every chapter) and generated questions, missed
    ones first, with a countdown; the clock starts on Start (MockQuiz.start()).

    progress: a file path, a ProgressStore (ProgressStore.in_memory() keeps nothing), or None for the drill's
    file ($EFFTRAIN_DRILL_PROGRESS or ~/.efftrain/drill_progress.json)."""
    chapter = chapter_key(chapter)
    store = progress if isinstance(progress, ProgressStore) else ProgressStore(progress)
    warning = ""
    try:
        store.check_writable()
    except ProgressError as e:
        store.persist = False
        warning = f"Progress will not be saved: {e}"
    cards = cards_for(load_bank(bank), chapter)
    generators = [g for g in GENERATORS.values() if chapter in ("all", g.chapter)]
    session = MockSession(cards, generators, store, minutes=minutes, seed=seed, clock=clock, start=False)
    return MockQuiz(session, chapter=chapter, warning=warning)

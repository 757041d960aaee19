"""The notebook quiz: quiz("lora") is a widget in JupyterLab and a text summary anywhere else.

ipywidgets is imported when a widget is first built, so importing this module needs only the standard
library (nbval, a terminal IPython and the tests read the text view).
"""

from __future__ import annotations

import html
import os
from typing import Callable

from efftrain_lib.drill.answers import NumericCheck
from efftrain_lib.drill.bank import Card, cards_for, chapter_key, load_bank
from efftrain_lib.drill.progress import ProgressError, ProgressStore
from efftrain_lib.drill.session import DrillSession, answer_block


def html_text(text: str) -> str:
    return f'<div style="white-space: pre-wrap; line-height: 1.4">{html.escape(text)}</div>'


class Quiz:
    """The notebook quiz: a DrillSession plus an ipywidgets box built on first display.

    Displayed in JupyterLab it is the widget (`.widget`); anywhere without a widget frontend
    (nbval, a terminal IPython, print) it is a text summary of the current card, which is
    deterministic for a given progress file. The action methods are what the buttons call, usable
    directly as well: reveal, check, next, and grade_and_next for "I got it" / "I missed it"
    (got_it / missed_it grade without moving on).
    """

    def __init__(self, session: DrillSession, chapter: str = "all", warning: str = ""):
        self.session = session
        self.chapter = chapter
        self.warning = warning  # shown above the card: e.g. progress cannot be saved
        self._box = None
        self._note = ""  # what the last self-grade recorded, shown on the card that follows it

    # -- actions (the buttons call these) -----------------------------------------------------
    def reveal(self) -> str:
        answer = self.session.reveal() if not self.session.done else ""
        self._note = ""
        self._refresh()
        return answer

    def check(self, text: str | None = None) -> NumericCheck | None:
        # Widget callbacks must not raise (the error would only reach the log): ignore what doesn't apply.
        if self.session.done or self.session.graded or not self.session.current.is_numeric:
            return None
        if text is None:
            text = self.answer_box.value if self._box is not None else ""
        self._recording(lambda: self.session.check(text))
        self._note = ""
        self._refresh()
        return self.session.last_check

    def _recording(self, grade: Callable[[], object]) -> None:
        """Grade a card; if its answer cannot be saved, go on without saving and say so on the quiz
        (a callback's exception would only reach the log: the learner would see nothing)."""
        try:
            grade()
        except ProgressError as e:
            self.session.store.persist = False  # the session keeps its answers; the file is left alone
            self.warning = f"Progress is no longer saved: {e}"

    def got_it(self) -> None:
        self._self_grade(True)

    def missed_it(self) -> None:
        self._self_grade(False)

    def _self_grade(self, correct: bool) -> None:
        if not self.session.done and not self.session.graded:
            self._recording(lambda: self.session.grade(correct))
        self._refresh()

    def next(self) -> Card | None:
        card = self.session.next()
        self._note = ""
        if self._box is not None:
            self.answer_box.value = ""
        self._refresh()
        return card

    def grade_and_next(self, correct: bool) -> None:
        """What "I got it" / "I missed it" do: record the revealed card, then show the next one.

        The answer was read before grading, so staying on the card would only cost a click on Next;
        the next card says what was recorded. A numeric card's Check stays put instead: its feedback
        (what you said, what was expected) is worth reading.
        """
        s = self.session
        if s.done or s.graded or not s.revealed:
            self._refresh()
            return
        card = s.current
        self._recording(lambda: s.grade(correct))
        self.next()
        self._note = (
            f"Recorded {card.id}: got it." if correct
            else f"Recorded {card.id}: missed; it comes back first next time."
        )
        self._refresh()

    # -- text ---------------------------------------------------------------------------------
    def score_text(self) -> str:
        correct, answered = self.session.score
        pos = min(self.session.index + 1, len(self.session.queue))
        return f"Score: {correct}/{answered} · card {pos} of {len(self.session.queue)}"

    def text_summary(self) -> str:
        s = self.session
        lines = [f"Interview drill: {self.chapter}, {s.counts()}"]
        if self.warning:
            lines.append(f"Warning: {self.warning}")
        if s.done:
            lines.append(f"All cards done. {s.summary()}")
        else:
            lines.append(s.header())
            lines.append("Q: " + s.current.question)
            if s.revealed:
                lines.append(answer_block(s.current))
        if s.results and not s.done:
            lines.append(self.score_text())
        lines.append(
            "(Text view: in JupyterLab this is an interactive quiz. "
            f"In a terminal: python -m efftrain_lib.drill --chapter {self.chapter})"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text_summary()

    def _repr_pretty_(self, p, cycle: bool) -> None:
        p.text(self.text_summary())

    def _ipython_display_(self) -> None:
        from IPython.core.interactiveshell import InteractiveShell

        if not InteractiveShell.initialized():
            print(self.text_summary())
            return
        from IPython.display import display

        try:
            bundle = dict(self.widget._repr_mimebundle_() or {})
        except ImportError:  # no ipywidgets: the text is still useful
            bundle = {}
        # Frontends that render widgets show the widget; everything else (nbval) gets our text.
        bundle["text/plain"] = self.text_summary()
        display(bundle, raw=True)

    # -- the widget ---------------------------------------------------------------------------
    @property
    def widget(self):
        """The ipywidgets VBox (built on first use)."""
        if self._box is None:
            self._build()
        return self._box

    def _build(self) -> None:
        import ipywidgets as w

        self.header_label = w.HTML()
        self.warning_label = w.HTML()
        self.question_label = w.HTML()
        self.answer_html = w.HTML()
        self.feedback = w.HTML()
        self.answer_box = w.Text(placeholder="e.g. 4194304, 4.19e6, 4.2M, 112 GB", continuous_update=False)
        self.check_button = w.Button(description="Check", button_style="primary")
        self.reveal_button = w.Button(description="Reveal answer")
        self.got_button = w.Button(description="I got it", button_style="success")
        self.missed_button = w.Button(description="I missed it", button_style="danger")
        self.next_button = w.Button(description="Next")
        self.score_label = w.Label()

        self.check_button.on_click(lambda _: self.check())
        self.answer_box.observe(lambda ch: self.check(ch["new"]) if ch["new"] else None, names="value")
        self.reveal_button.on_click(lambda _: self.reveal())
        self.got_button.on_click(lambda _: self.grade_and_next(True))
        self.missed_button.on_click(lambda _: self.grade_and_next(False))
        self.next_button.on_click(lambda _: self.next())

        self.numeric_row = w.HBox([self.answer_box, self.check_button])
        self._box = w.VBox(
            [
                self.header_label,
                self.warning_label,  # under the header (the browser check reads the first HTML as the header)
                self.question_label,
                self.numeric_row,
                w.HBox([self.reveal_button, self.got_button, self.missed_button, self.next_button]),
                self.feedback,
                self.answer_html,
                self.score_label,
            ]
        )
        self._refresh()

    def _refresh(self) -> None:
        """Make the widgets show the session's state (a no-op before the widget is built)."""
        if self._box is None:
            return
        s = self.session
        card = s.current
        self.score_label.value = self.score_text()
        self.warning_label.value = (
            f'<b style="color: #cf222e">Warning: {html.escape(self.warning)}</b>' if self.warning else ""
        )
        if card is None:
            self.header_label.value = f"<b>Interview drill: {html.escape(self.chapter)}</b>"
            self.question_label.value = html_text(f"All cards done. {s.summary()}")
            self.answer_html.value = ""
            self.feedback.value = html.escape(self._note)
            self.numeric_row.layout.display = "none"
            for b in (self.reveal_button, self.got_button, self.missed_button, self.next_button):
                b.disabled = True
            return
        self.header_label.value = f"<b>{html.escape(s.header())}</b>"
        self.question_label.value = html_text("Q: " + card.question)
        self.numeric_row.layout.display = None if card.is_numeric else "none"
        self.answer_box.disabled = self.check_button.disabled = s.graded
        self.answer_html.value = (
            html_text(answer_block(card, show_expected=s.last_check is None)) if s.revealed else ""
        )
        if s.last_check is not None:
            self.feedback.value = html.escape(s.last_check.message)
        elif s.graded:
            self.feedback.value = (
                "Recorded: got it." if s.result else "Recorded: missed; it comes back first next time."
            )
        else:
            self.feedback.value = html.escape(self._note)
        self.reveal_button.disabled = s.revealed
        # Self-grading is for after the reveal, and only once per card.
        self.got_button.disabled = self.missed_button.disabled = not s.revealed or s.graded


def quiz(
    chapter: str = "lora",
    limit: int | None = None,
    *,
    progress: str | os.PathLike | ProgressStore | None = None,
    seed: int | None = None,
    bank: str | os.PathLike | None = None,
) -> Quiz:
    """A quiz over `chapter`'s cards (its key or any alias: "memory", "00"; "all" for every chapter),
    missed cards first.

    progress: a file path, a ProgressStore (ProgressStore.in_memory() keeps nothing), or None for
    $EFFTRAIN_DRILL_PROGRESS / ~/.efftrain/drill_progress.json, the same file the terminal drill uses.
    A file that cannot be written is reported above the first card (quiz.warning); the answers are
    then kept for this session only.
    """
    chapter = chapter_key(chapter)
    store = progress if isinstance(progress, ProgressStore) else ProgressStore(progress)
    warning = ""
    try:
        store.check_writable()  # say so now, on the quiz, rather than lose the first answer
    except ProgressError as e:
        store.persist = False  # the quiz still runs, ordered by what could be read; nothing is written
        warning = f"Progress will not be saved: {e}"
    cards = cards_for(load_bank(bank), chapter)
    return Quiz(DrillSession(cards, store, limit=limit, seed=seed), chapter=chapter, warning=warning)


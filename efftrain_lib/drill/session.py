"""One pass over the ordered cards, the logic both shells (terminal and widget) share."""

from __future__ import annotations

from typing import Sequence

from efftrain_lib.drill.answers import NumericCheck, explain_numeric
from efftrain_lib.drill.bank import Card
from efftrain_lib.drill.progress import CardStats, ProgressStore, card_status, order_cards
from efftrain_lib.drill.whiteboard import grade_whiteboard
from efftrain_lib.grade import Report


class DrillSession:
    """One pass over the ordered cards: reveal, check a number or self-grade, move on.

    Each card is graded at most once (an honest first answer); next() without grading skips the
    card without recording it. The terminal loop and the widget are thin shells around this.
    """

    def __init__(
        self,
        cards: Sequence[Card],
        store: ProgressStore,
        *,
        limit: int | None = None,
        seed: int | None = None,
        ordered: bool = False,
    ):
        """ordered=True: `cards` are already in the order to ask them (the mock interview orders its own)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of cards, got {limit}")
        self.store = store
        self.queue = (list(cards) if ordered else order_cards(cards, store, seed))[:limit]
        # Status at the start of the session, for headers ("missed last time").
        self.initial_status = {c.id: card_status(store.stats(c.id)) for c in self.queue}
        self.index = 0
        self.revealed = False
        self.result: bool | None = None  # the current card's grade, once given
        self.last_check: NumericCheck | None = None
        self.last_report: Report | None = None  # the grader's report on a whiteboard card's code
        self.results: list[tuple[str, bool]] = []

    # -- state ------------------------------------------------------------------------------
    @property
    def current(self) -> Card | None:
        return self.queue[self.index] if self.index < len(self.queue) else None

    @property
    def done(self) -> bool:
        return self.current is None

    @property
    def graded(self) -> bool:
        return self.result is not None

    @property
    def score(self) -> tuple[int, int]:
        """(correct, answered) in this session."""
        return sum(ok for _, ok in self.results), len(self.results)

    @property
    def missed_ids(self) -> list[str]:
        return [cid for cid, ok in self.results if not ok]

    def _require_card(self) -> Card:
        card = self.current
        if card is None:
            raise RuntimeError("the drill is over: no current card")
        return card

    # -- actions ----------------------------------------------------------------------------
    def reveal(self) -> str:
        """Mark the current card revealed and return its answer text (grading is separate)."""
        card = self._require_card()
        self.revealed = True
        return card.answer

    def check(self, text: str) -> NumericCheck:
        """Check a numeric answer; a readable answer grades the card (right or wrong) and reveals it."""
        card = self._require_card()
        if self.graded:
            raise RuntimeError(f"card {card.id!r} is already graded; call next()")
        result = explain_numeric(card, text)
        self.last_check = result
        if result.correct is not None:
            self.grade(result.correct)
        return result

    def check_code(self, code: str, *, timeout: float | None = None) -> Report:
        """Grade a whiteboard card's code with the chapter's grader (its exercise only): right if every
        check passes. Raises ValueError for a card that is not a whiteboard card, or no code."""
        card = self._require_card()
        if self.graded:
            raise RuntimeError(f"card {card.id!r} is already graded; call next()")
        self.last_report = grade_whiteboard(card, code, timeout=timeout)
        self.grade(self.last_report.all_passed)
        return self.last_report

    def grade(self, correct: bool) -> CardStats:
        """Record the current card as got (True) or missed (False); reveals the answer too."""
        card = self._require_card()
        if self.graded:
            raise RuntimeError(f"card {card.id!r} is already graded; call next()")
        self.result = bool(correct)
        self.revealed = True
        self.results.append((card.id, self.result))
        return self.store.record(card.id, self.result)

    def next(self) -> Card | None:
        """Move to the next card (the current one stays unrecorded if it was not graded)."""
        if not self.done:
            self.index += 1
        self.revealed = False
        self.result = None
        self.last_check = None
        self.last_report = None
        return self.current

    # -- text -------------------------------------------------------------------------------
    def header(self) -> str:
        card = self._require_card()
        status = {"missed": " · missed last time", "correct": " · answered correctly before"}.get(
            self.initial_status[card.id], ""
        )
        where = f"[{self.index + 1}/{len(self.queue)}]"
        return f"{where} {card.id} · {card.chapter} · difficulty {card.difficulty}{status}"

    def counts(self) -> str:
        statuses = list(self.initial_status.values())
        return (
            f"{len(self.queue)} cards ({statuses.count('missed')} missed last time, "
            f"{statuses.count('new')} new, {statuses.count('correct')} answered correctly before)"
        )

    def summary(self) -> str:
        correct, answered = self.score
        if answered == 0:
            return "No cards answered."
        text = f"Session over: {correct} of {answered} correct."
        if self.missed_ids:
            text += " Missed (they come back first next time): " + ", ".join(self.missed_ids) + "."
        return text


def answer_block(card: Card, show_expected: bool = True) -> str:
    """The revealed answer as both shells show it: the text, the expected number, where to read more."""
    lines = ["A: " + card.answer]
    if card.is_numeric and show_expected:
        lines.append(f"   Expected: {card.expected}")
    if card.how:
        lines.append(f"   Where the number comes from: {card.how}")
    if card.section:
        lines.append(f"   See: {card.section}")
    return "\n".join(lines)


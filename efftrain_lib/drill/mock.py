"""The mock interview: a timed session across every chapter, the logic both shells share.

    python -m efftrain_lib.drill --mock 20          # the terminal (efftrain_lib/drill/terminal.py)
    from efftrain_lib.drill.mock_widget import mock_interview
    mock_interview(20)                              # the notebook, with a visible countdown

Missed questions come first (the progress file the drill keeps), then the bank's cards with a generated
numeric question after every two (efftrain_lib/drill/generators.py: fresh parameters, the library's answer)
and a whiteboard card now and then (the learner's code is graded by the chapter's grader,
efftrain_lib/drill/whiteboard.py). When the time is
up no new question is asked; the report gives the score by topic and the three topics to revisit, with
links to their notebook sections.

Standard library only: the generators, which need torch, are handed in by the caller.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from efftrain_lib.chapters import CHAPTERS
from efftrain_lib.drill.bank import Card
from efftrain_lib.drill.progress import CardStats, ProgressStore, card_status, order_cards
from efftrain_lib.drill.session import DrillSession

if TYPE_CHECKING:  # the generators import torch; the mock only calls their .ask(rng)
    from efftrain_lib.drill.generators import Generator

__all__ = ["MAX_MINUTES", "Countdown", "MockSession", "Revisit", "clock_text", "minutes_text", "mock_order",
           "parse_minutes"]

MAX_MINUTES = 24 * 60
# After the missed questions: two cards, a generated question, two cards, a generated one, a card, a whiteboard.
PATTERN = ("card", "card", "generated", "card", "card", "generated", "card", "whiteboard")


def parse_minutes(text: str | float) -> float:
    """A mock's length in minutes: a finite number > 0 and at most a day; ValueError saying what is allowed."""
    try:
        minutes = float(text)
    except (TypeError, ValueError):
        minutes = math.nan
    if isinstance(text, bool) or not math.isfinite(minutes) or not 0 < minutes <= MAX_MINUTES:
        raise ValueError(f"the mock interview's length must be a number of minutes > 0 and <= {MAX_MINUTES} "
                         f"(e.g. 20 or 7.5), got {text!r}")
    return minutes


class Countdown:
    """Time left in a mock interview, read from `clock` (time.monotonic; tests pass a fake one)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic, *, start: bool = True):
        if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
                and seconds > 0):
            raise ValueError(f"a countdown needs a finite number of seconds > 0, got {seconds!r}")
        self.seconds = float(seconds)
        self.clock = clock
        self.started_at: float | None = None
        if start:
            self.start()

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else min(self.seconds, self.clock() - self.started_at)

    @property
    def remaining(self) -> float:
        return self.seconds - self.elapsed

    @property
    def expired(self) -> bool:
        return self.remaining <= 0

    @property
    def fraction_left(self) -> float:
        return self.remaining / self.seconds

    def text(self) -> str:
        """'12:05' (minutes:seconds left, rounded up: it reads 00:00 only when the time is up); '1:02:03' past an hour."""
        return clock_text(math.ceil(self.remaining - 1e-9))


def minutes_text(minutes: float) -> str:
    """'1 minute', '20 minutes', '7.5 minutes'."""
    return f"{minutes:g} minute" + ("" if minutes == 1 else "s")


def clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def mock_order(cards: Sequence[Card], generators: Sequence[Generator], store: ProgressStore,
               seed: int | None = None) -> list:
    """The order of a mock: every missed card or generator first (most misses first, as the drill orders
    them), then the rest in PATTERN: cards, a generated question after every two, a whiteboard card."""
    items = order_cards([*cards, *generators], store, seed)
    missed = [item for item in items if card_status(store.stats(item.id)) == "missed"]
    missed_ids = {item.id for item in missed}
    rest = [item for item in items if item.id not in missed_ids]
    streams = {
        "card": deque(i for i in rest if isinstance(i, Card) and not i.is_whiteboard),
        "generated": deque(i for i in rest if not isinstance(i, Card)),
        "whiteboard": deque(i for i in rest if isinstance(i, Card) and i.is_whiteboard),
    }
    order = list(missed)
    while any(streams.values()):
        for slot in PATTERN:
            source = streams[slot] or next((s for s in streams.values() if s), None)
            if source:
                order.append(source.popleft())
    return order


@dataclass(frozen=True)
class Revisit:
    """A topic to revisit: its chapter, the score in it, and where to read (the notebook, the sections)."""

    chapter: str
    correct: int
    answered: int
    links: tuple[str, ...]

    def __str__(self) -> str:
        return f"{CHAPTERS[self.chapter].label} ({self.correct}/{self.answered}): " + "; ".join(self.links)


class MockSession(DrillSession):
    """A timed DrillSession over cards and generated questions (drawn when reached), with a report.

    When the countdown has expired, next() asks nothing more: `time_up` is set and the session is done.
    The answer being given when the time runs out still counts.
    """

    def __init__(self, cards: Sequence[Card], generators: Sequence[Generator], store: ProgressStore, *,
                 minutes: float, seed: int | None = None, clock: Callable[[], float] = time.monotonic,
                 start: bool = True):
        super().__init__(mock_order(cards, generators, store, seed), store, ordered=True)
        self.minutes = parse_minutes(minutes)
        self.countdown = Countdown(self.minutes * 60, clock, start=start)
        self.rng = random.Random(seed)
        self.time_up = False
        self._drawn: dict[int, Card] = {}  # a generated question, drawn once when reached
        self.asked: dict[str, Card] = {}  # the cards answered, as asked (generated ones with their numbers)

    @property
    def current(self) -> Card | None:
        if self.time_up or self.index >= len(self.queue):
            return None
        item = self.queue[self.index]
        if isinstance(item, Card):
            return item
        if self.index not in self._drawn:
            self._drawn[self.index] = item.ask(self.rng)
        return self._drawn[self.index]

    def grade(self, correct: bool) -> CardStats:
        self.asked[self._require_card().id] = self.current
        return super().grade(correct)

    def next(self) -> Card | None:
        if self.countdown.expired:
            self.time_up = True
        return super().next()

    # -- text -------------------------------------------------------------------------------
    def header(self) -> str:
        card = self._require_card()
        status = {"missed": " · missed last time", "correct": " · answered correctly before"}.get(
            self.initial_status.get(card.id, "new"), "")
        kind = " · generated" if not isinstance(self.queue[self.index], Card) else (
            " · whiteboard" if card.is_whiteboard else "")
        return (f"[{self.index + 1}] {self.countdown.text()} left · {card.id} · {CHAPTERS[card.chapter].title}"
                f"{kind}{status}")

    def topic_scores(self) -> dict[str, tuple[int, int]]:
        """chapter key -> (correct, answered), in course order, for the chapters answered."""
        scores = {key: [0, 0] for key in CHAPTERS}
        for card_id, ok in self.results:
            score = scores[self.asked[card_id].chapter]
            score[0] += ok
            score[1] += 1
        return {key: (c, n) for key, (c, n) in scores.items() if n}

    def revisit(self, n: int = 3) -> list[Revisit]:
        """The n topics with the lowest share of correct answers (among those with a miss; ties: more
        misses first, then course order), each with the notebook sections of what was missed there (the
        chapter's notebook when a missed card names no section)."""
        course = list(CHAPTERS)
        scores = self.topic_scores()
        weak = [key for key, (c, a) in scores.items() if c < a]
        weak.sort(key=lambda key: (scores[key][0] / scores[key][1], -(scores[key][1] - scores[key][0]), course.index(key)))
        topics = []
        for key in weak[:n]:
            missed = [self.asked[cid] for cid, ok in self.results if not ok and self.asked[cid].chapter == key]
            links = list(dict.fromkeys(f"notebooks/{card.section}" for card in missed if card.section))
            if not links and CHAPTERS[key].notebook:
                links = [f"notebooks/{CHAPTERS[key].notebook}"]
            topics.append(Revisit(key, *scores[key], tuple(links)))
        return topics

    def report(self) -> str:
        correct, answered = self.score
        why = "time is up" if self.time_up else "every question asked" if self.index >= len(self.queue) else "stopped"
        lines = [f"Mock interview over ({why}): {correct} of {answered} correct in "
                 f"{clock_text(self.countdown.elapsed)} of {clock_text(self.minutes * 60)}."]
        if not answered:
            return lines[0] + " No question answered."
        lines.append("Score by topic:")
        for key, (c, n) in self.topic_scores().items():
            lines.append(f"  {CHAPTERS[key].label:<46} {c}/{n}  {100 * c / n:3.0f}%")
        topics = self.revisit()
        if topics:
            lines.append("Topics to revisit:")
            lines += [f"  {i}. {topic}" for i, topic in enumerate(topics, start=1)]
        else:
            lines.append("Nothing missed: no topic to revisit.")
        if self.missed_ids:
            lines.append("Missed (they come back first next time): " + ", ".join(self.missed_ids) + ".")
        return "\n".join(lines)

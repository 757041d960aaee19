"""Interview drill cards: the question bank, a terminal drill and a notebook quiz widget.

    python -m efftrain_lib.drill [--chapter lora] [--limit N] [--progress FILE] [--list] [--reset]

    from efftrain_lib.drill import quiz
    quiz("lora")            # a widget in JupyterLab, a text summary anywhere else

The cards live in efftrain_lib/data/questions.toml (read with stdlib tomllib). Progress is a small
JSON file, default ~/.efftrain/drill_progress.json, overridable with the EFFTRAIN_DRILL_PROGRESS
environment variable or a `progress=` argument / --progress option. Cards missed last time come back first.

Layers, each usable on its own (and tested without a terminal or a browser):
  bank       Card, load_bank, cards_for             parse and validate the TOML
  numbers    parse_number, check_numeric            read "4.19e6", "4,194,304", "4.2M", "112 GB"
  progress   ProgressStore, order_cards             what was missed, what comes next
  session    DrillSession                           one pass over the ordered cards
  shells     run_drill / main (terminal), Quiz / quiz (ipywidgets)

Only the standard library is imported at module level: the CLI starts instantly and works without
torch; ipywidgets is imported when a widget is first built.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import math
import os
import random
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Callable, Iterable, Sequence

from efftrain_lib.chapters import CHAPTERS, UnknownChapter
from efftrain_lib.chapters import resolve as resolve_chapter

__all__ = [
    "CHAPTERS",
    "chapter_key",
    "DEFAULT_TOLERANCE",
    "PROGRESS_ENV",
    "BankError",
    "ProgressError",
    "Card",
    "CardStats",
    "NumericCheck",
    "default_bank_path",
    "load_bank",
    "validate_cards",
    "cards_for",
    "parse_number",
    "check_numeric",
    "explain_numeric",
    "format_number",
    "default_progress_path",
    "ProgressStore",
    "order_cards",
    "card_status",
    "DrillSession",
    "run_drill",
    "main",
    "Quiz",
    "quiz",
]

DEFAULT_TOLERANCE = 0.01  # relative; used when a numeric card gives no tolerance
PROGRESS_ENV = "EFFTRAIN_DRILL_PROGRESS"
_PROGRESS_VERSION = 1

_REQUIRED = ("id", "chapter", "difficulty", "question", "answer")
_OPTIONAL = ("numeric_answer", "tolerance", "unit", "section", "source")
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# "01_lora.ipynb § Why B starts at zero": a notebook file, then the heading that demonstrates the card.
_SECTION = re.compile(r"\S+\.ipynb § \S.*")


# ------------------------------------------------------------------------------------------------
# The bank
# ------------------------------------------------------------------------------------------------


class BankError(ValueError):
    """A malformed question bank. `errors` lists every problem found, each naming card and field."""

    def __init__(self, origin: str, errors: list[str]):
        self.origin = origin
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{origin}: {len(self.errors)} problem(s) in the question bank:\n{lines}")


@dataclass(frozen=True)
class Card:
    """One interview question. See the header of questions.toml for what each field means."""

    id: str
    chapter: str
    difficulty: int
    question: str
    answer: str
    numeric_answer: float | None = None
    tolerance: float | None = None
    unit: str | None = None
    section: str | None = None
    source: str | None = None

    @property
    def is_numeric(self) -> bool:
        return self.numeric_answer is not None

    @property
    def rel_tol(self) -> float:
        """The relative tolerance the numeric check uses (DEFAULT_TOLERANCE when none is given)."""
        return DEFAULT_TOLERANCE if self.tolerance is None else self.tolerance

    @property
    def expected(self) -> str:
        """The numeric answer as shown to the learner: '4,194,304 params (±1%)'."""
        if not self.is_numeric:
            return ""
        unit = f" {self.unit}" if self.unit else ""
        tol = f" (±{self.rel_tol * 100:g}%)" if self.rel_tol > 0 else " (exact)"
        return f"{format_number(self.numeric_answer)}{unit}{tol}"


def default_bank_path() -> Path:
    """Where the course's questions.toml lives (inside the installed package)."""
    return Path(str(resources.files("efftrain_lib").joinpath("data", "questions.toml")))


def load_bank(path: str | os.PathLike | None = None) -> list[Card]:
    """Read and validate a question bank; raises BankError naming each bad card and field."""
    path = Path(path) if path is not None else default_bank_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise BankError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as e:
        raise BankError(str(path), [f"not valid TOML: {e}"]) from None
    return validate_cards(data, origin=str(path))


def _label(i: int, raw: object) -> str:
    """'card #3 (id 'lora-x')': how an error names a card, even one without a usable id."""
    cid = raw.get("id") if isinstance(raw, dict) else None
    return f"card #{i} (id {cid!r})" if isinstance(cid, str) and cid else f"card #{i} (no id)"


def _is_number(x: object) -> bool:
    # bool is an int subclass; `difficulty = true` must not pass as 1.
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _card_errors(label: str, raw: dict) -> list[str]:
    """Every problem with one card's fields (empty list: the card is fine)."""
    errs = []

    def bad(fieldname: str, problem: str) -> None:
        errs.append(f"{label}: field {fieldname!r}: {problem}")

    for key in raw:
        if key not in _REQUIRED and key not in _OPTIONAL:
            bad(key, f"unknown field (allowed: {', '.join(_REQUIRED + _OPTIONAL)})")
    for key in _REQUIRED:
        if key not in raw:
            bad(key, "missing required field")

    if "id" in raw and not (isinstance(raw["id"], str) and _SLUG.fullmatch(raw["id"])):
        bad("id", f"must be a slug of lowercase letters, digits and dashes, got {raw['id']!r}")
    if "chapter" in raw and not (isinstance(raw["chapter"], str) and raw["chapter"] in CHAPTERS):
        bad("chapter", _bank_chapter_problem(raw["chapter"]))
    if "difficulty" in raw:
        d = raw["difficulty"]
        if not (isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 3):
            bad("difficulty", f"must be 1, 2 or 3, got {d!r}")
    for key in ("question", "answer"):
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            bad(key, "must be a non-empty string")

    has_number = "numeric_answer" in raw
    if has_number and not (_is_number(raw["numeric_answer"]) and math.isfinite(raw["numeric_answer"])):
        bad("numeric_answer", f"must be a finite number, got {raw['numeric_answer']!r}")
    if "tolerance" in raw:
        t = raw["tolerance"]
        if not has_number:
            bad("tolerance", "given without numeric_answer (a tolerance needs a number to apply to)")
        elif not (_is_number(t) and 0 <= t < 1):
            bad("tolerance", f"must be a relative tolerance in [0, 1), e.g. 0.01 for 1%, got {t!r}")
    if "unit" in raw:
        if not has_number:
            bad("unit", "given without numeric_answer")
        elif not (isinstance(raw["unit"], str) and raw["unit"].strip()):
            bad("unit", "must be a non-empty string such as 'GB' or 'params'")
    if "section" in raw and not (isinstance(raw["section"], str) and _SECTION.fullmatch(raw["section"])):
        bad("section", f"must look like '01_lora.ipynb § Heading', got {raw['section']!r}")
    if "source" in raw and not (isinstance(raw["source"], str) and raw["source"].strip()):
        bad("source", "must be a non-empty string such as 'seed'")
    return errs


def _bank_chapter_problem(name: object) -> str:
    """Why `name` is not a chapter key the bank accepts: the bank spells every chapter one way."""
    try:
        key = resolve_chapter(name).key
    except UnknownChapter:
        return f"unknown chapter {name!r} (one of: {', '.join(CHAPTERS)})"
    return f"write the chapter's key {key!r}, not its alias {name!r}"


def validate_cards(data: dict, origin: str = "<questions>") -> list[Card]:
    """Turn parsed TOML ({"card": [ {...}, ... ]}) into Cards, or raise BankError listing all problems."""
    if not isinstance(data, dict):
        raise BankError(origin, ["top level must be a table with a [[card]] array"])
    extra = [k for k in data if k != "card"]
    raws = data.get("card")
    if not isinstance(raws, list) or not raws:
        raise BankError(origin, ["no cards: expected one or more [[card]] tables"])
    errors = [f"unknown top-level key {k!r} (only [[card]] tables are allowed)" for k in extra]

    first_seen: dict[str, int] = {}
    cards = []
    for i, raw in enumerate(raws, start=1):
        if not isinstance(raw, dict):
            errors.append(f"card #{i}: must be a table, got {type(raw).__name__}")
            continue
        label = _label(i, raw)
        card_errs = _card_errors(label, raw)
        cid = raw.get("id")
        if isinstance(cid, str):
            if cid in first_seen:
                card_errs.append(f"{label}: field 'id': duplicate id, already used by card #{first_seen[cid]}")
            else:
                first_seen[cid] = i
        errors.extend(card_errs)
        if not card_errs:
            cards.append(
                Card(
                    id=raw["id"],
                    chapter=raw["chapter"],
                    difficulty=raw["difficulty"],
                    question=raw["question"].strip(),
                    answer=raw["answer"].strip(),
                    numeric_answer=float(raw["numeric_answer"]) if "numeric_answer" in raw else None,
                    tolerance=float(raw["tolerance"]) if "tolerance" in raw else None,
                    unit=raw.get("unit"),
                    section=raw.get("section"),
                    source=raw.get("source"),
                )
            )
    if errors:
        raise BankError(origin, errors)
    return cards


def chapter_key(chapter: str | int | None) -> str:
    """"all" for None or "all", else the canonical key of a chapter's key or alias ("memory" -> "memory_math").
    Raises UnknownChapter (a ValueError) listing the names allowed."""
    if chapter is None or (isinstance(chapter, str) and chapter.strip().lower() == "all"):
        return "all"
    try:
        return resolve_chapter(chapter).key
    except UnknownChapter as e:
        raise UnknownChapter(f"{e}; or 'all'") from None


def cards_for(cards: Iterable[Card], chapter: str | int | None = None) -> list[Card]:
    """The cards of one chapter (any of its names; all cards for None or "all"), in bank order."""
    key = chapter_key(chapter)
    return list(cards) if key == "all" else [c for c in cards if c.chapter == key]


# ------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------

NUMBER_FORMS = """\
Accepted number forms (spaces optional, case-insensitive):
  plain and scientific   4194304   4.19e6   -3   .5
  thousands separators   4,194,304   4_194_304   4 194 304   (a comma before exactly three digits
                         groups thousands; any other comma is a decimal comma: 0,39 = 0.39)
  powers                 2^22   2**22   2^-24   4.19x10^6   4.19*10**6
  magnitude suffixes     4.2k  4.2M (or m, mn, million)  7B (or bn, billion)  1T (trillion)
                         (for byte units, k/M/G/T mean kB/MB/GB/TB instead)
  units                  the card's unit may follow: 0.39%   4.2M params   10000x
                         byte units convert: 112 GB = 104.3 GiB = 112000 MB (GB = 1e9, GiB = 2^30 bytes)
  approximations         a leading ~, ≈, about or approx is ignored
"""

_BYTE_UNITS = {
    "b": 1, "byte": 1, "bytes": 1,
    "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_MAGNITUDES = {
    "k": 1e3, "thousand": 1e3, "m": 1e6, "mn": 1e6, "million": 1e6,
    "b": 1e9, "bn": 1e9, "billion": 1e9, "t": 1e12, "trillion": 1e12,
}  # fmt: skip
# Different spellings of the same non-byte unit, after _norm_unit (lowercase, no spaces, no plural s).
_UNIT_ALIASES = {
    "percent": "%", "pct": "%",
    "parameter": "param", "p": "param",
    "×": "x", "time": "x", "fold": "x",
}  # fmt: skip

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
_TIMES_TEN = re.compile(rf"({_NUM})\s*(?:x|×|\*)\s*10\s*(?:\^|\*\*)\s*([+-]?\d+)", re.I)
_POWER = re.compile(rf"({_NUM})\s*(?:\^|\*\*)\s*([+-]?\d+(?:\.\d+)?)", re.I)
_PLAIN = re.compile(_NUM, re.I)
_MAGNITUDE = re.compile(r"(thousand|million|billion|trillion|mn|bn|k|m|b|t)(?![a-z])\s*(.*)", re.I | re.S)
_APPROX = re.compile(r"^(?:~|≈|about\s|approx\.?\s|approximately\s)\s*", re.I)


def _norm_unit(u: str) -> str:
    u = re.sub(r"\s+", "", u.lower()).rstrip(".")
    if len(u) > 2 and u.endswith("s") and u not in _BYTE_UNITS:
        u = u[:-1]  # params -> param, samples -> sample
    return _UNIT_ALIASES.get(u, u)


def _is_byte_unit(unit: str | None) -> bool:
    return unit is not None and unit.strip().lower() in _BYTE_UNITS


def _unit_factor(rest: str, unit: str | None) -> float | None:
    """How to convert a value written with unit text `rest` into the card's `unit`; None if it doesn't fit."""
    if rest == "":
        return 1.0
    if unit is None:
        return None
    if _is_byte_unit(unit) and rest.strip().lower() in _BYTE_UNITS:
        return _BYTE_UNITS[rest.strip().lower()] / _BYTE_UNITS[unit.strip().lower()]
    return 1.0 if _norm_unit(rest) == _norm_unit(unit) else None


def parse_number(text: str, unit: str | None = None) -> float:
    """Read a learner's number, expressed in `unit` (a card's unit) unless the text names another one.

    See NUMBER_FORMS for what is accepted. Raises ValueError with a readable reason otherwise.
    """
    s = _APPROX.sub("", str(text).strip())
    # Thousands separators: a comma, underscore or (thin) space followed by exactly three digits.
    s = re.sub(r"(?<=\d)[,_ \u00a0\u202f](?=\d{3}(?!\d))", "", s)
    s = re.sub(r"(?<=\d),(?=\d)", ".", s)  # what is left between digits is a decimal comma
    if not s:
        raise ValueError("empty answer")

    for pattern, combine in (
        (_TIMES_TEN, lambda m: float(m.group(1)) * 10.0 ** int(m.group(2))),
        (_POWER, lambda m: float(m.group(1)) ** float(m.group(2))),
        (_PLAIN, lambda m: float(m.group(0))),
    ):
        m = pattern.match(s)
        if m:
            try:
                value = combine(m)
            except (OverflowError, ZeroDivisionError):
                raise ValueError(f"{text!r} is out of range") from None
            rest = s[m.end():].strip()
            break
    else:
        raise ValueError(f"{text!r} does not start with a number")

    factor = _unit_factor(rest, unit)
    if factor is None:
        # "4.2M params", "7B", "1.5 billion": a magnitude word, then (maybe) the unit.
        mm = _MAGNITUDE.fullmatch(rest)
        if mm and not (_is_byte_unit(unit) and mm.group(1).lower() in ("b", "t")):
            inner = _unit_factor(mm.group(2).strip(), unit)
            if inner is not None:
                factor = _MAGNITUDES[mm.group(1).lower()] * inner
    if factor is None:
        expected = f"'{unit}' (or nothing)" if unit else "no unit"
        if _is_byte_unit(unit):
            expected += ", or another byte unit such as MB, MiB, GB, GiB"
        raise ValueError(f"did not understand {rest!r} after the number; expected {expected}")
    value *= factor
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def format_number(x: float) -> str:
    """4194304.0 -> '4,194,304'; 0.390625 -> '0.390625'; 5.96e-08 -> '5.96e-08'."""
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.6g}"


@dataclass(frozen=True)
class NumericCheck:
    """The outcome of checking a numeric answer: correct is None when the text could not be read."""

    correct: bool | None
    value: float | None
    message: str


def explain_numeric(card: Card, text: str) -> NumericCheck:
    """Check `text` against a numeric card and say why it is right, wrong or unreadable."""
    if not card.is_numeric:
        raise ValueError(f"card {card.id!r} has no numeric_answer to check against")
    try:
        value = parse_number(text, card.unit)
    except ValueError as e:
        return NumericCheck(None, None, f"Could not read {text!r} as a number: {e}.")
    # A tiny floor on the tolerance absorbs float noise ("4.194304M" is 4194304.0000000005).
    ok = math.isclose(value, card.numeric_answer, rel_tol=max(card.rel_tol, 1e-9), abs_tol=1e-300)
    unit = f" {card.unit}" if card.unit else ""
    if ok:
        return NumericCheck(True, value, f"Correct: {format_number(value)}{unit}; expected {card.expected}.")
    said = f"{format_number(value)}{unit}"
    return NumericCheck(False, value, f"Not quite: you said {said}; expected {card.expected}.")


def check_numeric(card: Card, text: str) -> bool:
    """True if `text` reads as a number within the card's relative tolerance (see NUMBER_FORMS)."""
    return bool(explain_numeric(card, text).correct)


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------


class ProgressError(ValueError):
    """The progress file exists but cannot be used."""


@dataclass
class CardStats:
    """What the store remembers about one card. last_seen is a counter (deterministic, unlike clocks)."""

    attempts: int = 0
    corrects: int = 0
    misses: int = 0
    last_result: str | None = None  # "correct" | "missed"
    last_seen: int = 0  # value of the store's clock when last answered; larger = more recent
    last_seen_at: str | None = None  # UTC timestamp, for humans only; ordering never uses it


def default_progress_path() -> Path:
    """$EFFTRAIN_DRILL_PROGRESS if set, else ~/.efftrain/drill_progress.json."""
    env = os.environ.get(PROGRESS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".efftrain" / "drill_progress.json"


class ProgressStore:
    """Per-card attempts / corrects / misses / last result, kept in a JSON file.

    Every record() is saved at once (atomically: write a temp file, then rename), so quitting,
    a closed terminal or a dead kernel never loses more than the card being answered.
    ProgressStore.in_memory() keeps nothing on disk (deterministic notebooks, tests).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, persist: bool = True):
        self.path = Path(path).expanduser() if path is not None else default_progress_path()
        self.persist = persist
        self.clock = 0
        self._cards: dict[str, CardStats] = {}
        if persist and self.path.exists():
            self._load()

    @classmethod
    def in_memory(cls) -> ProgressStore:
        return cls(Path(os.devnull), persist=False)

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.clock = int(data.get("clock", 0))
            self._cards = {cid: CardStats(**st) for cid, st in data.get("cards", {}).items()}
        except (ValueError, TypeError, AttributeError) as e:
            raise ProgressError(
                f"progress file {self.path} is unreadable ({e}); fix or delete it, "
                f"or run `python -m efftrain_lib.drill --reset --progress {self.path}`"
            ) from None

    def save(self) -> None:
        if not self.persist:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": _PROGRESS_VERSION,
            "clock": self.clock,
            "cards": {cid: vars(st) for cid, st in sorted(self._cards.items())},
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".drill_progress.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, ensure_ascii=False)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def stats(self, card_id: str) -> CardStats | None:
        return self._cards.get(card_id)

    def record(self, card_id: str, correct: bool) -> CardStats:
        """Count one answer to `card_id` and save."""
        st = self._cards.setdefault(card_id, CardStats())
        self.clock += 1
        st.attempts += 1
        st.corrects += bool(correct)
        st.misses += not correct
        st.last_result = "correct" if correct else "missed"
        st.last_seen = self.clock
        st.last_seen_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.save()
        return st

    def reset(self, card_ids: Iterable[str] | None = None) -> int:
        """Forget the given cards (all cards for None); returns how many had progress. Saves."""
        if card_ids is None:
            n = len(self._cards)
            self._cards.clear()
            self.clock = 0
        else:
            ids = set(card_ids)
            n = sum(1 for cid in ids if cid in self._cards)
            self._cards = {cid: st for cid, st in self._cards.items() if cid not in ids}
        self.save()
        return n


def card_status(stats: CardStats | None) -> str:
    """'new', 'missed' (last answer was wrong) or 'correct' (last answer was right)."""
    if stats is None or stats.attempts == 0:
        return "new"
    return "missed" if stats.last_result == "missed" else "correct"


def order_cards(cards: Sequence[Card], store: ProgressStore, seed: int | None = None) -> list[Card]:
    """The order to ask `cards` in, so that missed cards come back first:

    1. cards whose last answer was a miss: most misses first, then least recently seen;
    2. cards never answered;
    3. cards last answered correctly: fewest corrects first, then least recently seen.
    Remaining ties keep bank order (seed=None) or follow a shuffle by random.Random(seed):
    the same seed and progress always give the same order.
    """
    tie = list(range(len(cards)))
    if seed is not None:
        random.Random(seed).shuffle(tie)

    def key(i: int) -> tuple:
        st = store.stats(cards[i].id)
        status = card_status(st)
        if status == "missed":
            return (0, -st.misses, st.last_seen, tie[i])
        if status == "new":
            return (1, 0, 0, tie[i])
        return (2, st.corrects, st.last_seen, tie[i])

    return [cards[i] for i in sorted(range(len(cards)), key=key)]


# ------------------------------------------------------------------------------------------------
# A session: the logic both shells share
# ------------------------------------------------------------------------------------------------


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
    ):
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of cards, got {limit}")
        self.store = store
        self.queue = order_cards(cards, store, seed)[:limit]
        # Status at the start of the session, for headers ("missed last time").
        self.initial_status = {c.id: card_status(store.stats(c.id)) for c in self.queue}
        self.index = 0
        self.revealed = False
        self.result: bool | None = None  # the current card's grade, once given
        self.last_check: NumericCheck | None = None
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


def _answer_block(card: Card, show_expected: bool = True) -> str:
    lines = ["A: " + card.answer]
    if card.is_numeric and show_expected:
        lines.append(f"   Expected: {card.expected}")
    if card.section:
        lines.append(f"   See: {card.section}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Terminal shell
# ------------------------------------------------------------------------------------------------


class _Quit(Exception):
    """The learner typed q (or input ended): stop after saving."""


def _no_input() -> str:
    raise EOFError


def _reader(inp: IO[str] | Callable[[], str] | None) -> tuple[Callable[[], str], bool]:
    """A no-argument line reader that raises EOFError at the end, from a stream or a function,
    and whether to echo what it reads (a script or a pipe, unlike a person at a terminal, leaves
    no trace of its answers on screen: echoing keeps the transcript readable)."""
    if inp is None:
        if sys.stdin is None:  # e.g. pythonw, some daemons: no input at all is the same as EOF
            return _no_input, False
        return input, not sys.stdin.isatty()
    if hasattr(inp, "readline"):

        def read() -> str:
            line = inp.readline()
            if line == "":
                raise EOFError
            return line.rstrip("\r\n")

        return read, not (hasattr(inp, "isatty") and inp.isatty())
    return inp, False


def run_drill(
    cards: Sequence[Card],
    store: ProgressStore,
    *,
    inp: IO[str] | Callable[[], str] | None = None,
    out: IO[str] | None = None,
    limit: int | None = None,
    seed: int | None = None,
    title: str = "",
) -> DrillSession:
    """The terminal drill. `inp` is a stream or a no-argument function (default: input());
    end of input or `q` stops cleanly. Progress is saved after every card. Returns the session."""
    out = out if out is not None else sys.stdout
    read, echo = _reader(inp)
    session = DrillSession(cards, store, limit=limit, seed=seed)

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def ask(prompt: str) -> str:
        out.write(prompt)
        out.flush()
        answer = read().strip()
        if echo:
            out.write(answer + "\n")
        if answer.lower() in ("q", "quit", "exit"):
            raise _Quit
        return answer

    say(f"efftrain drill{' · ' + title if title else ''}: {session.counts()}")
    if store.persist:
        say(f"Progress file: {store.path}")
    say("Numeric cards: type a number (Enter alone reveals and counts as a miss). "
        "Other cards: Enter reveals, then grade yourself y/n. q quits.")
    try:
        while not session.done:
            card = session.current
            say()
            say(session.header())
            say("Q: " + card.question)
            if card.is_numeric:
                _ask_numeric(session, card, ask, say)
            else:
                _ask_self_graded(session, card, ask, say)
            session.next()
    except (_Quit, EOFError, KeyboardInterrupt) as stop:
        say()
        say("End of input: stopping." if isinstance(stop, EOFError) else "Stopping.")
    say()
    say(session.summary())
    if store.persist and session.results:
        say(f"Progress saved to {store.path}")
    return session


def _ask_numeric(session: DrillSession, card: Card, ask: Callable, say: Callable) -> None:
    unit = f" in {card.unit}" if card.unit else ""
    while True:
        text = ask(f"Your answer{unit} (Enter = reveal, q = quit): ")
        if text == "":
            session.grade(False)  # revealed without an answer: count it as missed
            say("Revealed (counted as missed).")
            break
        result = session.check(text)
        if result.correct is not None:
            say(result.message)
            break
        say(result.message + " Try again, e.g. 4194304, 4.19e6, 4,194,304, 4.2M, 112 GB.")
    # After a checked number the message already named the expected value.
    say(_answer_block(card, show_expected=session.last_check is None))


def _ask_self_graded(session: DrillSession, card: Card, ask: Callable, say: Callable) -> None:
    ask("Think (or type) your answer, then Enter to reveal (q = quit): ")
    say(_answer_block(session.current))
    session.reveal()
    while True:
        reply = ask("Did you get it? [y/n] ").lower()
        if reply in ("y", "yes"):
            session.grade(True)
            return
        if reply in ("n", "no"):
            session.grade(False)
            return
        say("Please answer y or n (q quits).")


def _list_cards(
    cards: Sequence[Card], store: ProgressStore, seed: int | None, out: IO[str], limit: int | None = None
) -> None:
    """One line per card, in the order the drill would ask them."""
    ordered = order_cards(cards, store, seed)[:limit]
    width = max((len(c.id) for c in ordered), default=0)
    print(f"{len(ordered)} cards, in drill order (status, difficulty, id, question):", file=out)
    for c in ordered:
        st = store.stats(c.id)
        status = card_status(st)
        if status == "correct":
            status = f"ok x{st.corrects}"
        q = " ".join(c.question.split())
        q = q if len(q) <= 70 else q[:69] + "…"
        num = " [#]" if c.is_numeric else ""
        print(f"  {status:<7} {c.difficulty}  {c.id:<{width}}  {q}{num}", file=out)


def _chapter_arg(text: str) -> str:
    try:
        return chapter_key(text)
    except UnknownChapter as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None, *, inp=None, out: IO[str] | None = None) -> int:
    """`python -m efftrain_lib.drill`: see --help. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m efftrain_lib.drill",
        description="Interview drill cards for the efftrain course. Cards you missed come back first.",
        epilog=NUMBER_FORMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--chapter", type=_chapter_arg, default="all", metavar="CHAPTER",
                        help=f"drill one chapter: {', '.join(CHAPTERS)}, or an alias (memory, 03, "
                             "mixed_precision, ...); default: all")
    parser.add_argument("--limit", type=int, metavar="N", help="ask at most N cards")
    parser.add_argument(
        "--progress",
        metavar="FILE",
        help=f"progress file (default: ${PROGRESS_ENV} or ~/.efftrain/drill_progress.json)",
    )
    parser.add_argument("--list", action="store_true", help="list the cards in drill order and exit")
    parser.add_argument("--reset", action="store_true", help="forget progress (of --chapter's cards) and exit")
    parser.add_argument("--seed", type=int, help="shuffle cards that are otherwise tied, reproducibly")
    parser.add_argument("--bank", metavar="FILE", help="use another questions.toml")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")

    out = out if out is not None else sys.stdout
    if out is sys.stdout and hasattr(sys.stdout, "reconfigure"):
        # Answers contain Chinese terms and math symbols; never crash on a terminal that can't show them.
        sys.stdout.reconfigure(errors="replace")
    try:
        cards = cards_for(load_bank(args.bank), args.chapter)
        path = Path(args.progress) if args.progress else default_progress_path()
        if args.reset and args.chapter == "all":
            # Do not load a possibly corrupt file just to empty it.
            existed = path.exists()
            path.unlink(missing_ok=True)
            print(f"Reset all progress ({path} {'deleted' if existed else 'did not exist'}).", file=out)
            return 0
        store = ProgressStore(path)
    except (BankError, ProgressError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    if args.reset:
        n = store.reset(c.id for c in cards)
        print(f"Reset progress of {n} card(s) in chapter {args.chapter!r} ({path}).", file=out)
        return 0
    if args.list:
        _list_cards(cards, store, args.seed, out, args.limit)
        return 0
    run_drill(cards, store, inp=inp, out=out, limit=args.limit, seed=args.seed, title=args.chapter)
    return 0


# ------------------------------------------------------------------------------------------------
# Notebook shell
# ------------------------------------------------------------------------------------------------


def _html_text(text: str) -> str:
    return f'<div style="white-space: pre-wrap; line-height: 1.4">{html.escape(text)}</div>'


class Quiz:
    """The notebook quiz: a DrillSession plus an ipywidgets box built on first display.

    Displayed in JupyterLab it is the widget (`.widget`); anywhere without a widget frontend
    (nbval, a terminal IPython, print) it is a text summary of the current card, which is
    deterministic for a given progress file. The action methods are what the buttons call, usable
    directly as well: reveal, check, next, and grade_and_next for "I got it" / "I missed it"
    (got_it / missed_it grade without moving on).
    """

    def __init__(self, session: DrillSession, chapter: str = "all"):
        self.session = session
        self.chapter = chapter
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
        result = self.session.check(text)
        self._note = ""
        self._refresh()
        return result

    def got_it(self) -> None:
        self._self_grade(True)

    def missed_it(self) -> None:
        self._self_grade(False)

    def _self_grade(self, correct: bool) -> None:
        if not self.session.done and not self.session.graded:
            self.session.grade(correct)
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
        s.grade(correct)
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
        if s.done:
            lines.append(f"All cards done. {s.summary()}")
        else:
            lines.append(s.header())
            lines.append("Q: " + s.current.question)
            if s.revealed:
                lines.append(_answer_block(s.current))
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
        if card is None:
            self.header_label.value = f"<b>Interview drill: {html.escape(self.chapter)}</b>"
            self.question_label.value = _html_text(f"All cards done. {s.summary()}")
            self.answer_html.value = ""
            self.feedback.value = html.escape(self._note)
            self.numeric_row.layout.display = "none"
            for b in (self.reveal_button, self.got_button, self.missed_button, self.next_button):
                b.disabled = True
            return
        self.header_label.value = f"<b>{html.escape(s.header())}</b>"
        self.question_label.value = _html_text("Q: " + card.question)
        self.numeric_row.layout.display = None if card.is_numeric else "none"
        self.answer_box.disabled = self.check_button.disabled = s.graded
        self.answer_html.value = (
            _html_text(_answer_block(card, show_expected=s.last_check is None)) if s.revealed else ""
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
    """
    chapter = chapter_key(chapter)
    store = progress if isinstance(progress, ProgressStore) else ProgressStore(progress)
    cards = cards_for(load_bank(bank), chapter)
    return Quiz(DrillSession(cards, store, limit=limit, seed=seed), chapter=chapter)


def _cli() -> int:
    try:
        return main()
    except BrokenPipeError:
        # `... --list | head`: the reader went away; that is not an error worth a traceback.
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(_cli())

"""The question bank: Card, and reading and validating efftrain_lib/data/questions.toml.

load_bank() parses the TOML (stdlib tomllib) and raises BankError listing every problem, each naming
its card and field; cards_for() picks one chapter's cards by any of the chapter's names.

A numeric card of the course types no number: its answer, where it comes from and the classic wrong
methods come from drill_figures.json beside the bank, which `python -m efftrain_lib.drill.figures
--write` computes with the course's library (efftrain_lib/drill/figures.py). Reading that cache needs
only the standard library, so listing or drilling cards never imports torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from efftrain_lib.chapters import CHAPTERS, UnknownChapter
from efftrain_lib.chapters import resolve as resolve_chapter
from efftrain_lib.drill.answers import format_number

DEFAULT_TOLERANCE = 0.01  # relative; used when a numeric card gives no tolerance
FIGURES_FILE = "drill_figures.json"  # beside questions.toml: the computed numeric answers

_REQUIRED = ("id", "chapter", "difficulty", "question", "answer")
_OPTIONAL = ("numeric_answer", "tolerance", "unit", "section", "source", "exercise")
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# "01_lora.ipynb § Why B starts at zero": a notebook file, then the heading that demonstrates the card.
_SECTION = re.compile(r"\S+\.ipynb § \S.*")
_EXERCISE = re.compile(r"\d+\.\d+")  # "4.1": the chapter's exercise that grades a whiteboard card


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
    exercise: str | None = None  # a whiteboard card: the chapter's exercise whose grader checks the code
    how: str | None = None  # where the numeric answer comes from: "computed: ...", "measured: ...", "cited: ..."
    wrong_answers: tuple[tuple[str, float], ...] = ()  # (a classic wrong method, the number it gives)

    @property
    def is_numeric(self) -> bool:
        return self.numeric_answer is not None

    @property
    def is_whiteboard(self) -> bool:
        return self.exercise is not None

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


def load_bank(path: str | os.PathLike | None = None, figures: str | os.PathLike | None = None) -> list[Card]:
    """Read and validate a question bank; raises BankError naming each bad card and field.

    figures: the computed numeric answers (default: drill_figures.json beside the bank, if there is one).
    """
    path = Path(path) if path is not None else default_bank_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise BankError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as e:
        raise BankError(str(path), [f"not valid TOML: {e}"]) from None
    beside = path.with_name(FIGURES_FILE)
    if figures is None and not beside.exists():
        return validate_cards(data, origin=str(path))
    return validate_cards(data, origin=str(path), figures=read_figures(figures if figures is not None else beside))


def read_figures(path: str | os.PathLike) -> dict[str, dict]:
    """The figure cache: card id -> {"value", "kind", "how", "wrong": [[why, value], ...]}. BankError if
    it is missing or malformed (regenerate it with `python -m efftrain_lib.drill.figures --write`)."""
    origin = str(path)
    try:
        figures = json.loads(Path(path).read_text(encoding="utf-8"))["figures"]
    except FileNotFoundError:
        raise BankError(origin, ["figure file not found"]) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BankError(origin, [f"not a figure file ({e}); run python -m efftrain_lib.drill.figures --write"]) from None
    errors = []
    for cid, fig in figures.items():
        ok = (isinstance(fig, dict) and _is_number(fig.get("value")) and math.isfinite(fig["value"])
              and isinstance(fig.get("how"), str) and isinstance(fig.get("wrong"), list)
              and all(isinstance(w, list) and len(w) == 2 and isinstance(w[0], str) and _is_number(w[1])
                      for w in fig["wrong"]))
        if not ok:
            errors.append(f"figure {cid!r}: expected value (a finite number), how (text) and wrong "
                          f"([[why, value], ...]), got {fig!r}")
    if errors:
        raise BankError(origin, errors)
    return figures


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
    if "exercise" in raw and not (isinstance(raw["exercise"], str) and _EXERCISE.fullmatch(raw["exercise"])):
        bad("exercise", f"must name one of the chapter's exercises such as '4.1', got {raw['exercise']!r}")
    return errs


def _bank_chapter_problem(name: object) -> str:
    """Why `name` is not a chapter key the bank accepts: the bank spells every chapter one way."""
    try:
        key = resolve_chapter(name).key
    except UnknownChapter:
        return f"unknown chapter {name!r} (one of: {', '.join(CHAPTERS)})"
    return f"write the chapter's key {key!r}, not its alias {name!r}"


def _with_figure(label: str, raw: dict, figure: dict | None, errs: list[str]) -> dict:
    """The card's fields with its computed answer filled in (a card may not also type the number)."""
    if figure is None:
        return raw
    if "numeric_answer" in raw:
        errs.append(f"{label}: field 'numeric_answer': typed in, but {FIGURES_FILE} computes it "
                    f"({figure['value']!r}): delete the typed number")
        return raw
    return {**raw, "numeric_answer": figure["value"]}


def validate_cards(data: dict, origin: str = "<questions>", figures: dict[str, dict] | None = None) -> list[Card]:
    """Turn parsed TOML ({"card": [ {...}, ... ]}) into Cards, or raise BankError listing all problems.
    figures (read_figures): computed numeric answers by card id, filled into their cards."""
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
        cid = raw.get("id")
        figure = (figures or {}).get(cid) if isinstance(cid, str) else None
        card_errs: list[str] = []
        raw = _with_figure(label, raw, figure, card_errs)
        card_errs += _card_errors(label, raw)
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
                    exercise=raw.get("exercise"),
                    how=figure["how"] if figure else None,
                    wrong_answers=tuple((why, float(v)) for why, v in figure["wrong"]) if figure else (),
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


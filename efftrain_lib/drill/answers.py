"""Reading a learner's numeric answer: "4.19e6", "4,194,304", "2^22", "4.2M params", "112 GB".

parse_number() reads the text (NUMBER_FORMS says what is accepted) or raises UnreadableAnswer saying why;
explain_numeric() checks it against a card and says why it is right, wrong or unreadable (and, when
the number is what a classic wrong method gives, names that method).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a card is only read here; the bank imports this module (format_number)
    from efftrain_lib.drill.bank import Card


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


class UnreadableAnswer(ValueError):
    """The drill's own error for an answer that does not read as one finite real number; its message
    says why. The only exception parse_number raises (tests/test_drill.py fuzzes it)."""


def _quoted(text: object) -> str:
    """The learner's text as an error message shows it: quoted, and cut short if it is very long."""
    shown = repr(str(text))
    return shown if len(shown) <= 42 else shown[:40] + "…'"


def parse_number(text: str, unit: str | None = None) -> float:
    """Read a learner's number, expressed in `unit` (a card's unit) unless the text names another one.

    See NUMBER_FORMS for what is accepted. Raises UnreadableAnswer (a ValueError) with a readable
    reason otherwise, also for what evaluates to no finite real number (-8^0.5, 10^400, 0^-1).
    """
    s = _APPROX.sub("", str(text).strip())
    # Thousands separators: a comma, underscore or (thin) space followed by exactly three digits.
    s = re.sub(r"(?<=\d)[,_ \u00a0\u202f](?=\d{3}(?!\d))", "", s)
    s = re.sub(r"(?<=\d),(?=\d)", ".", s)  # what is left between digits is a decimal comma
    if not s:
        raise UnreadableAnswer("empty answer")

    for pattern, combine in (
        (_TIMES_TEN, lambda m: float(m.group(1)) * 10.0 ** int(m.group(2))),
        (_POWER, lambda m: float(m.group(1)) ** float(m.group(2))),
        (_PLAIN, lambda m: float(m.group(0))),
    ):
        m = pattern.match(s)
        if m:
            try:
                value = combine(m)
            # ValueError: an exponent of thousands of digits (int() refuses to convert it)
            except (OverflowError, ZeroDivisionError, ValueError):
                raise UnreadableAnswer(f"{_quoted(text)} is out of range") from None
            if isinstance(value, complex):  # (-8) ** 0.5: Python answers with a complex number
                raise UnreadableAnswer(f"{_quoted(text)} is not a real number (a negative number to a "
                                       "fractional power)")
            rest = s[m.end():].strip()
            break
    else:
        raise UnreadableAnswer(f"{_quoted(text)} does not start with a number")

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
        raise UnreadableAnswer(f"did not understand {_quoted(rest)} after the number; expected {expected}")
    value *= factor
    if not math.isfinite(value):
        raise UnreadableAnswer(f"{_quoted(text)} is not a finite number")
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
    except UnreadableAnswer as e:
        return NumericCheck(None, None, f"Could not read {_quoted(text)} as a number: {e}.")
    # A tiny floor on the tolerance absorbs float noise ("4.194304M" is 4194304.0000000005).
    ok = math.isclose(value, card.numeric_answer, rel_tol=max(card.rel_tol, 1e-9), abs_tol=1e-300)
    unit = f" {card.unit}" if card.unit else ""
    if ok:
        return NumericCheck(True, value, f"Correct: {format_number(value)}{unit}; expected {card.expected}.")
    said = f"{format_number(value)}{unit}"
    message = f"Not quite: you said {said}; expected {card.expected}."
    mistake = classic_mistake(card, value)
    if mistake:
        message += f" That is the classic mistake: {mistake}."
    return NumericCheck(False, value, message)


def classic_mistake(card: Card, value: float) -> str | None:
    """The card's wrong method that gives `value` (within the card's tolerance, at least 0.5%; the
    nearest one if several do), or None."""
    tol = max(card.rel_tol, 0.005)
    near = [(abs(value - wrong), why) for why, wrong in card.wrong_answers if math.isclose(value, wrong, rel_tol=tol)]
    return min(near)[1] if near else None


def check_numeric(card: Card, text: str) -> bool:
    """True if `text` reads as a number within the card's relative tolerance (see NUMBER_FORMS)."""
    return bool(explain_numeric(card, text).correct)


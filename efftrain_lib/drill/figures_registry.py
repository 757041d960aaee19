"""The drill's figure registry: what a figure is, how one is registered, and where a measured one is read.

Every numeric card's number is a Figure registered under the card's id by one of the figures_* modules
(computed by the library, measured in a notebook's stored run, or cited), with the classic wrong methods
beside it; efftrain_lib/drill/figures.py gathers them and writes the cache the bank reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from efftrain_lib.grade import find_repo_root

__all__ = ["CITED", "COMPUTED", "FIGURES", "Figure", "GB", "GIB", "MB", "MEASURED", "MIB", "figure",
           "measured_number", "section_outputs", "typed_in_other_unit"]

COMPUTED, MEASURED, CITED = "computed", "measured", "cited"
GB, GIB, MB, MIB = 1e9, 2**30, 1e6, 2**20


@dataclass(frozen=True)
class Figure:
    """One card's number: `compute()` returns (value, {classic wrong method: the value it gives})."""

    card_id: str
    kind: str  # computed | measured | cited
    how: str  # shown with the answer: where the number comes from
    compute: Callable[[], tuple[float, dict[str, float]]]

    def describe(self) -> str:
        return f"{self.kind}: {self.how}"


FIGURES: dict[str, Figure] = {}


def figure(card_id: str, kind: str, how: str):
    """Register the decorated function as the figure of card `card_id`."""
    if kind not in (COMPUTED, MEASURED, CITED):
        raise ValueError(f"figure {card_id!r}: kind must be {COMPUTED!r}, {MEASURED!r} or {CITED!r}, got {kind!r}")

    def register(fn):
        if card_id in FIGURES:
            raise ValueError(f"figure {card_id!r} is registered twice")
        FIGURES[card_id] = Figure(card_id, kind, " ".join(how.split()), fn)
        return fn
    return register


def typed_in_other_unit(value: float, unit: float, other: float) -> float:
    """The number a learner types when they compute in `other` units but the card asks for `unit`s
    (33.55 for 32 MiB computed in MB)."""
    return value * unit / other


def section_outputs(notebook: str, heading: str) -> str:
    """Everything the cells of one notebook section printed or displayed when the notebook last ran
    (scripts/build_notebooks.py stores the outputs): the run behind a measured figure. notebook:
    '01_lora.ipynb'; heading: the section's heading without its #s."""
    path = find_repo_root() / "notebooks" / notebook
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    texts, inside = [], False
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if re.match(r"#+ ", line):
                    level = len(line) - len(line.lstrip("#"))
                    if line.lstrip("#").strip() == heading:
                        inside, depth = True, level
                    elif inside and level <= depth:
                        inside = False
            continue
        if inside:
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                texts.append("".join(out.get("text") or data.get("text/markdown") or data.get("text/plain") or ""))
    if not texts:
        raise LookupError(f"no outputs under {heading!r} in {path} (run scripts/build_notebooks.py first)")
    return "\n".join(texts)


def measured_number(notebook: str, heading: str, pattern: str) -> float:
    """The first number `pattern` (a regex with one group) finds in a section's stored outputs."""
    found = re.search(pattern, section_outputs(notebook, heading))
    if found is None:
        raise LookupError(f"{pattern!r} not found in the outputs of {notebook} § {heading}")
    return float(found.group(1).replace(",", ""))

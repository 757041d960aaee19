"""The course's chapters: one registry that the grader, the drill, the notebooks and every message read.

A chapter's canonical key is its exercise file's name (`memory_math`, `lora`, `checkpointing`,
`loss_scaling`, `accumulation`): a learner's work lives in exercises/<key>.py, so the key never changes.
Every other name a learner might type is an alias of it:

    resolve("memory_math") is resolve("memory") is resolve("00") is resolve(0) is resolve("00_memory_anatomy")

so `python -m efftrain_lib.grade memory`, `check("00")` and `python -m efftrain_lib.drill --chapter
memory_math` all mean chapter 0. Besides the aliases written below, a chapter answers to its number
("3", "03"), its notebook's name ("03_mixed_precision", with or without ".ipynb") and its exercise
file's name ("loss_scaling.py"); case, dashes and spaces do not matter ("Mixed-Precision").

Adding a chapter is one entry in _COURSE below (the grader module and the exercise file default to
efftrain_lib/grading/<key>.py and <key>.py); tests/test_chapters.py then checks that its files exist
and that its names clash with no other chapter's. `register()` adds one at run time (a notebook,
a test).

Standard library only: the drill's command line starts without importing torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

__all__ = ["CHAPTERS", "Chapter", "UnknownChapter", "allowed_names", "register", "resolve"]

_KEY = re.compile(r"[a-z][a-z0-9_]*")  # a module name: the exercise file is <key>.py
_ALIAS = re.compile(r"[a-z0-9][a-z0-9_]*")


def _normalise(name: str) -> str:
    """'Mixed-Precision' -> 'mixed_precision'; 'notebooks/01_lora.ipynb' -> '01_lora'; 'lora.py' -> 'lora'."""
    text = PurePath(str(name).strip()).name.lower()
    text = text.removesuffix(".ipynb").removesuffix(".py")
    return re.sub(r"[\s-]+", "_", text)


@dataclass(frozen=True)
class Chapter:
    """One chapter of the course and every name it goes by."""

    key: str  # canonical: the exercise file's stem, e.g. "memory_math"
    number: int | None  # 0.. in course order; None for a chapter outside the numbering (a demo)
    title: str  # "Memory anatomy": what messages call it
    notebook: str = ""  # the file under notebooks/, e.g. "00_memory_anatomy.ipynb"; "" until written
    aliases: tuple[str, ...] = ()  # other names learners use: "memory", "precision", ...
    grader: str = ""  # the grader module; default efftrain_lib.grading.<key>
    filename: str = ""  # the exercise file, in exercises/ and solutions/; default <key>.py
    check_timeout_s: float | None = None  # seconds per check when the caller names none (None: grade's default)
    # Filled in from the fields above: every name resolve() accepts for this chapter.
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.key, str) and _KEY.fullmatch(self.key)):
            raise ValueError(f"chapter key must be a module name such as 'memory_math', got {self.key!r}")
        if self.number is not None and not (type(self.number) is int and self.number >= 0):
            raise ValueError(f"chapter {self.key!r}: number must be an int >= 0 or None, got {self.number!r}")
        if self.notebook and not self.notebook.endswith(".ipynb"):
            raise ValueError(f"chapter {self.key!r}: notebook must be a file name like "
                             f"'00_memory_anatomy.ipynb', got {self.notebook!r}")
        aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
        for alias in aliases:
            if not (isinstance(alias, str) and _ALIAS.fullmatch(alias)):
                raise ValueError(f"chapter {self.key!r}: alias must be lowercase letters, digits and "
                                 f"underscores, got {alias!r}")
        set_ = object.__setattr__  # frozen: derived fields are set once, here
        set_(self, "aliases", aliases)
        set_(self, "grader", self.grader or f"efftrain_lib.grading.{self.key}")
        set_(self, "filename", self.filename or f"{self.key}.py")
        derived = [self.key, *aliases, _normalise(self.filename)]
        if self.number is not None:
            derived += [str(self.number), f"{self.number:02d}"]
        if self.notebook:
            derived.append(self.notebook_stem)
        set_(self, "names", tuple(dict.fromkeys(derived)))  # unique, in order

    @property
    def notebook_stem(self) -> str:
        """'00_memory_anatomy' ('' when the chapter has no notebook yet)."""
        return self.notebook.removesuffix(".ipynb")

    @property
    def label(self) -> str:
        """'Chapter 0: Memory anatomy', for messages."""
        return f"Chapter {self.number}: {self.title}" if self.number is not None else self.title


# The course, in order. One entry per chapter; the later chapters (distributed, qlora, capstone) are
# added here by whoever writes them.
_COURSE = (
    Chapter("memory_math", 0, "Memory anatomy", "00_memory_anatomy.ipynb", ("memory", "memory_anatomy")),
    Chapter("lora", 1, "LoRA", "01_lora.ipynb"),
    Chapter("checkpointing", 2, "Gradient checkpointing", "02_gradient_checkpointing.ipynb",
            ("gradient_checkpointing",)),
    Chapter("loss_scaling", 3, "Mixed precision and loss scaling", "03_mixed_precision.ipynb",
            ("precision", "mixed_precision")),
    Chapter("accumulation", 4, "Gradient accumulation", "04_gradient_accumulation.ipynb",
            ("gradient_accumulation",)),
    # A grade's first check starts two ranks (each a fresh Python importing torch: ~3.5 s idle, past 10 s
    # on a loaded 2-core machine); a hang inside a rank is still stopped after the grader's RANK_TIMEOUT_S.
    Chapter("distributed", 5, "Beyond one machine: DDP, ZeRO, FSDP", "05_distributed.ipynb",
            ("ddp", "data_parallel", "zero", "fsdp"), check_timeout_s=30.0),
    Chapter("qlora", 6, "QLoRA: a 4-bit base under LoRA", "06_qlora.ipynb", ("nf4",)),
    Chapter("capstone", 7, "Capstone: fit a model to a budget with every technique at once", "07_capstone.ipynb",
            ("fit", "planner")),
)

# key -> Chapter, in course order. The one registry: efftrain_lib.grading re-exports this very dict.
CHAPTERS: dict[str, Chapter] = {c.key: c for c in _COURSE}


class UnknownChapter(LookupError, ValueError):
    """A name that is no chapter's key or alias; the message lists what is allowed."""


def allowed_names() -> str:
    """'memory_math (0, 00, memory, ...), lora (1, 01, ...), ...': what an error message offers."""
    return "; ".join(
        f"{c.key} (also {', '.join(n for n in c.names if n != c.key)})" if len(c.names) > 1 else c.key
        for c in CHAPTERS.values()
    )


def resolve(name: str | int | Chapter) -> Chapter:
    """The chapter a key, alias, number or notebook name stands for; UnknownChapter otherwise."""
    if isinstance(name, Chapter):
        return name
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise UnknownChapter(f"a chapter is named by a string or a number, got {type(name).__name__}; "
                             f"choose one of: {allowed_names()}")
    wanted = _normalise(str(name))
    # Read live (not an index built once): a chapter registered or patched in later is found too.
    for chapter in CHAPTERS.values():
        if wanted in chapter.names:
            return chapter
    raise UnknownChapter(f"unknown chapter {name!r}; choose one of: {allowed_names()}")


def register(key: str, grader: str = "", filename: str = "", notebook: str = "", title: str = "", *,
             number: int | None = None, aliases: tuple[str, ...] = ()) -> Chapter:
    """Add (or replace) a chapter at run time; returns its entry.

    The positional order is the grader registry's former one (key, grader module, exercise file,
    notebook, title). Raises ValueError if one of its names already belongs to another chapter.
    """
    chapter = Chapter(key, number, title or key, notebook.removeprefix("notebooks/"), aliases, grader, filename)
    for other in CHAPTERS.values():
        clash = set(chapter.names) & set(other.names)
        if other.key != key and clash:
            raise ValueError(f"chapter {key!r}: {', '.join(map(repr, sorted(clash)))} already name(s) "
                             f"chapter {other.key!r}")
    CHAPTERS[key] = chapter
    return chapter

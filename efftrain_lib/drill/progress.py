"""What the learner missed and what comes next: per-card statistics kept in a small JSON file.

ProgressStore counts attempts, corrects and misses per card id; order_cards() puts missed cards first.
Several stores may share one file (a notebook quiz and a terminal drill open at once): each save
re-reads the file under an OS lock and applies only this store's own changes to it, so no session
overwrites another's answers.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from efftrain_lib.drill.bank import Card

try:
    import fcntl  # POSIX
except ImportError:
    fcntl = None
try:
    import msvcrt  # Windows
except ImportError:
    msvcrt = None

PROGRESS_ENV = "EFFTRAIN_DRILL_PROGRESS"
_PROGRESS_VERSION = 1


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


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# What each CardStats field may hold in the file (a hand edit, a half-merged file, another program).
_FIELD_CHECKS = {
    "attempts": (_count, "a whole number >= 0"),
    "corrects": (_count, "a whole number >= 0"),
    "misses": (_count, "a whole number >= 0"),
    "last_result": (lambda v: v in (None, "correct", "missed"), "'correct', 'missed' or null"),
    "last_seen": (_count, "a whole number >= 0"),
    "last_seen_at": (lambda v: v is None or isinstance(v, str), "a timestamp string or null"),
}


def _parse_progress(text: str) -> tuple[int, dict[str, CardStats]]:
    """The clock and per-card stats in a progress file's text; ValueError saying what is wrong."""
    data = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object at the top, got {type(data).__name__}")
    clock, cards = data.get("clock", 0), data.get("cards", {})
    if not _count(clock):
        raise ValueError(f"'clock' must be a whole number >= 0, got {clock!r}")
    if not isinstance(cards, dict):
        raise ValueError(f"'cards' must be an object of card id -> stats, got {type(cards).__name__}")
    parsed = {}
    for cid, st in cards.items():
        if not isinstance(st, dict):
            raise ValueError(f"card {cid!r}: expected an object of stats, got {type(st).__name__}")
        for name, value in st.items():
            if name not in _FIELD_CHECKS:
                raise ValueError(f"card {cid!r}: unknown field {name!r} (allowed: {', '.join(_FIELD_CHECKS)})")
            ok, expected = _FIELD_CHECKS[name]
            if not ok(value):
                raise ValueError(f"card {cid!r}: field {name!r} must be {expected}, got {value!r}")
        parsed[cid] = CardStats(**st)
    return clock, parsed


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on `path` (created if missing, never deleted) for the block.

    fcntl.flock on POSIX (released when the descriptor closes, so a killed process frees it);
    msvcrt.locking on Windows (it retries for about 10 s, then raises OSError). Where neither exists
    there is no lock: the merge on save still narrows a lost update to the milliseconds between
    re-reading and replacing the file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif msvcrt is not None:
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        if fcntl is None and msvcrt is not None:
            with contextlib.suppress(OSError):
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)


def _write_atomically(path: Path, data: dict) -> None:
    """Write JSON to a temp file beside `path`, then rename it over `path`: a reader sees the old file
    or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".drill_progress.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_progress_path() -> Path:
    """$EFFTRAIN_DRILL_PROGRESS if set, else ~/.efftrain/drill_progress.json."""
    env = os.environ.get(PROGRESS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".efftrain" / "drill_progress.json"


class ProgressStore:
    """Per-card attempts / corrects / misses / last result, kept in a JSON file.

    Every record() is saved at once (atomically: write a temp file, then rename), so quitting,
    a closed terminal or a dead kernel never loses more than the card being answered. A save merges:
    under a lock on a sibling file (.<name>.lock) it re-reads the file and replays this store's own
    changes (answers, resets) onto it, so stores sharing a file keep each other's answers.
    ProgressStore.in_memory() keeps nothing on disk (deterministic notebooks, tests).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, persist: bool = True):
        self.path = Path(path).expanduser() if path is not None else default_progress_path()
        self.persist = persist
        self.clock = 0
        self._cards: dict[str, CardStats] = {}
        # This store's changes not yet saved, each a function that applies it to a store's state.
        self._pending: list[Callable[[ProgressStore], object]] = []
        if persist and self.path.exists():
            self._load()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    @classmethod
    def in_memory(cls) -> ProgressStore:
        return cls(Path(os.devnull), persist=False)

    def _load(self) -> None:
        try:
            self.clock, self._cards = _parse_progress(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # unreadable, not JSON, or JSON of the wrong shape
            raise ProgressError(
                f"progress file {self.path} is unreadable ({e}); fix or delete it, "
                f"or run `python -m efftrain_lib.drill --reset --progress {self.path}`"
            ) from None

    def check_writable(self) -> None:
        """Raise ProgressError now if answers could not be saved: call it before the first question,
        so that a bad path is reported before an answer is lost, not after."""
        if not self.persist:
            return
        try:
            if self.path.is_dir():
                raise IsADirectoryError(f"{self.path} is a directory")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(self.lock_path):  # what save() needs: the lock and a temp file beside the file
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".drill_progress.", suffix=".tmp")
                os.close(fd)
                os.unlink(tmp)
        except OSError as e:
            raise ProgressError(self._cannot_write(e)) from None

    def _cannot_write(self, e: OSError) -> str:
        return (f"progress file {self.path} cannot be written ({e}); choose a writable file with "
                f"--progress FILE or ${PROGRESS_ENV} (in a notebook: quiz(..., progress=FILE))")

    def save(self) -> None:
        """Merge this store's unsaved changes into the file, under the lock; then hold the merged state."""
        if not self.persist:
            self._pending.clear()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(self.lock_path):
                merged = ProgressStore(self.path)  # what is on disk now, other stores' answers included
                for change in self._pending:
                    change(merged)
                _write_atomically(self.path, {
                    "version": _PROGRESS_VERSION,
                    "clock": merged.clock,
                    "cards": {cid: vars(st) for cid, st in sorted(merged._cards.items())},
                })  # fmt: skip
        except OSError as e:  # the changes stay pending (and in memory): a later save may still write them
            raise ProgressError(self._cannot_write(e)) from None
        self.clock, self._cards = merged.clock, merged._cards
        self._pending.clear()

    def _change(self, change: Callable[[ProgressStore], object]) -> object:
        """Apply a change here at once (stats() sees it even if saving fails), then save it."""
        result = change(self)
        self._pending.append(change)
        self.save()
        return result

    def stats(self, card_id: str) -> CardStats | None:
        return self._cards.get(card_id)

    def record(self, card_id: str, correct: bool) -> CardStats:
        """Count one answer to `card_id` and save."""
        at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

        def answer(store: ProgressStore) -> None:
            st = store._cards.setdefault(card_id, CardStats())
            store.clock += 1
            st.attempts += 1
            st.corrects += bool(correct)
            st.misses += not correct
            st.last_result = "correct" if correct else "missed"
            st.last_seen = store.clock
            st.last_seen_at = at

        self._change(answer)
        return self._cards[card_id]

    def reset(self, card_ids: Iterable[str] | None = None) -> int:
        """Forget the given cards (all cards for None); returns how many had progress. Saves."""
        ids = None if card_ids is None else set(card_ids)

        def forget(store: ProgressStore) -> int:
            n = sum(1 for cid in store._cards if ids is None or cid in ids)
            store._cards = {cid: st for cid, st in store._cards.items() if ids is not None and cid not in ids}
            if ids is None:
                store.clock = 0
            return n

        return self._change(forget)


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


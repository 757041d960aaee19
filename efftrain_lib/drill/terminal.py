"""The terminal drill: `python -m efftrain_lib.drill` (see --help), run_drill() and run_mock() for scripts
and tests."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import IO, Callable, Sequence

from efftrain_lib.chapters import CHAPTERS, UnknownChapter
from efftrain_lib.drill.answers import NUMBER_FORMS
from efftrain_lib.drill.bank import BankError, Card, cards_for, chapter_key, load_bank
from efftrain_lib.drill.progress import (
    PROGRESS_ENV,
    ProgressError,
    ProgressStore,
    card_status,
    default_progress_path,
    order_cards,
)
from efftrain_lib.drill.mock import MockSession, minutes_text, parse_minutes
from efftrain_lib.drill.session import DrillSession, answer_block

# The mock interview's generated questions compute their answers with the library, which imports torch
# (seconds): the module is loaded by name, only when --mock asks for it, so that listing and drilling cards
# start at once. It is efftrain_lib/drill/generators.py, in this package and layer.
GENERATORS_MODULE = "efftrain_lib.drill.generators"


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
    end of input or `q` stops cleanly. Progress is saved after every card. Returns the session.
    Raises ProgressError before the first question if the progress file cannot be written."""
    store.check_writable()
    out = out if out is not None else sys.stdout
    ask, say = _asker(inp, out)
    session = DrillSession(cards, store, limit=limit, seed=seed)

    say(f"efftrain drill{' · ' + title if title else ''}: {session.counts()}")
    if store.persist:
        say(f"Progress file: {store.path}")
    say("Numeric cards: type a number (Enter alone reveals and counts as a miss). Whiteboard cards: the path "
        "of your .py file, or Enter. Other cards: Enter reveals, then grade yourself y/n. q quits.")
    _ask_each(session, ask, say)
    say()
    say(session.summary())
    if store.persist and session.results:
        say(f"Progress saved to {store.path}")
    return session


def _asker(inp, out) -> tuple[Callable[[str], str], Callable[[str], None]]:
    """ask(prompt) -> the learner's line (raises _Quit on q) and say(text), on `inp` and `out`."""
    read, echo = _reader(inp)

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

    return ask, say


def _ask_each(session: DrillSession, ask: Callable, say: Callable) -> None:
    """Ask the session's cards until it is done or the learner stops (q, end of input, Ctrl-C)."""
    try:
        while not session.done:
            card = session.current
            say()
            say(session.header())
            say("Q: " + card.question)
            if card.is_whiteboard:
                _ask_whiteboard(session, card, ask, say)
            elif card.is_numeric:
                _ask_numeric(session, card, ask, say)
            else:
                _ask_self_graded(session, card, ask, say)
            session.next()
    except (_Quit, EOFError, KeyboardInterrupt) as stop:
        say()
        say("End of input: stopping." if isinstance(stop, EOFError) else "Stopping.")


def run_mock(
    cards: Sequence[Card],
    generators: Sequence,
    store: ProgressStore,
    *,
    minutes: float,
    inp: IO[str] | Callable[[], str] | None = None,
    out: IO[str] | None = None,
    seed: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> MockSession:
    """The mock interview in a terminal (efftrain_lib/drill/mock.py): `minutes` long, missed questions
    first, generated numeric questions and whiteboard cards mixed in; ends with the score by topic and the
    topics to revisit. No question is asked once the time is up (the one being answered still counts)."""
    store.check_writable()
    out = out if out is not None else sys.stdout
    ask, say = _asker(inp, out)
    session = MockSession(cards, generators, store, minutes=minutes, seed=seed, clock=clock)
    say(f"Mock interview: {minutes_text(session.minutes)}, the clock is running. Questions you missed before come "
        "first; generated questions draw new numbers every time.")
    say("Numeric: type a number (Enter alone reveals: a miss). Whiteboard: type the path of your .py file "
        "(the chapter's grader checks it). Others: Enter reveals, then y/n. q quits.")
    _ask_each(session, ask, say)
    if session.time_up:
        say()
        say("Time is up.")
    say()
    say(session.report())
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
    say(answer_block(card, show_expected=session.last_check is None))


def _ask_whiteboard(session: DrillSession, card: Card, ask: Callable, say: Callable) -> None:
    """A whiteboard card: the path of the learner's .py file is graded by the chapter's grader; Enter alone
    reveals the sketch and the learner grades themself."""
    while True:
        text = ask(f"Write it as a module (imports included) in a .py file and type its path; the grader checks "
                   f"Exercise {card.exercise} (Enter = reveal and grade yourself, q = quit): ")
        if text == "":
            _reveal_and_self_grade(session, ask, say)
            return
        path = Path(text).expanduser()
        try:
            code = path.read_text(encoding="utf-8")
            report = session.check_code(code)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            say(f"Could not grade {path}: {e}. Try again.")
            continue
        say(report.to_text())
        say(answer_block(card))
        return


def _ask_self_graded(session: DrillSession, card: Card, ask: Callable, say: Callable) -> None:
    ask("Think (or type) your answer, then Enter to reveal (q = quit): ")
    _reveal_and_self_grade(session, ask, say)


def _reveal_and_self_grade(session: DrillSession, ask: Callable, say: Callable) -> None:
    say(answer_block(session.current))
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


def _minutes_arg(text: str) -> float:
    try:
        return parse_minutes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _chapter_arg(text: str) -> str:
    try:
        return chapter_key(text)
    except UnknownChapter as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None, *, inp=None, out: IO[str] | None = None) -> int:
    """`python -m efftrain_lib.drill`: see --help. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m efftrain_lib.drill",
        description="Interview drill cards for the efftrain course. Cards you missed come back first. "
                    "--mock MINUTES: a timed mock interview.",
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
    parser.add_argument("--mock", type=_minutes_arg, metavar="MINUTES",
                        help="a timed mock interview across the chapters (or --chapter's): missed questions first, "
                             "generated numeric questions, whiteboard code graded; ends with a score by topic")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.mock is not None and (args.list or args.reset or args.limit is not None):
        parser.error("--mock runs for MINUTES: it does not combine with --list, --reset or --limit")

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
        if args.list:  # listing writes nothing
            _list_cards(cards, store, args.seed, out, args.limit)
            return 0
        store.check_writable()  # before the first question (or the reset), not after an answer is lost
        if args.reset:
            n = store.reset(c.id for c in cards)
            print(f"Reset progress of {n} card(s) in chapter {args.chapter!r} ({path}).", file=out)
            return 0
        if args.mock is not None:
            generators = importlib.import_module(GENERATORS_MODULE).GENERATORS.values()
            if args.chapter != "all":
                generators = [g for g in generators if g.chapter == args.chapter]
            run_mock(cards, list(generators), store, minutes=args.mock, inp=inp, out=out, seed=args.seed)
            return 0
        run_drill(cards, store, inp=inp, out=out, limit=args.limit, seed=args.seed, title=args.chapter)
    except (BankError, ProgressError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    """The console entry point: main() on sys.argv, quiet when the reader of a pipe goes away."""
    try:
        return main()
    except BrokenPipeError:
        # `... --list | head`: the reader went away; that is not an error worth a traceback.
        sys.stdout = open(os.devnull, "w")
        return 0


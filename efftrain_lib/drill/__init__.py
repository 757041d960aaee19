"""Interview drill cards: the question bank, a terminal drill, a notebook quiz widget and a mock interview.

    python -m efftrain_lib.drill [--chapter lora] [--limit N] [--progress FILE] [--list] [--reset]
    python -m efftrain_lib.drill --mock 20     # a timed mock interview across the chapters

    from efftrain_lib.drill import quiz
    quiz("lora")            # a widget in JupyterLab, a text summary anywhere else
    from efftrain_lib.drill.mock_widget import mock_interview
    mock_interview(20)      # the mock interview, with a visible countdown

The cards live in efftrain_lib/data/questions.toml (read with stdlib tomllib). A numeric card's number
is not typed there: efftrain_lib/drill/figures.py computes it with the course's library (or reads it from a
notebook's run, or cites it), with the classic wrong methods beside it, into drill_figures.json, which the
bank reads; a wrong number that is one of those methods is named in the feedback. Progress is a small
JSON file, default ~/.efftrain/drill_progress.json, overridable with the EFFTRAIN_DRILL_PROGRESS
environment variable or a `progress=` argument / --progress option. Cards missed last time come back first.
A chapter is named by its key or any alias (efftrain_lib/chapters.py): "memory_math", "memory", "00".

One module per job, each usable on its own (and tested without a terminal or a browser):
  bank       Card, load_bank, cards_for             parse and validate the TOML, fill in the figures
  figures    FIGURES, compute_all                   every number, computed (imports torch: not imported here)
  answers    parse_number, check_numeric            read "4.19e6", "4,194,304", "4.2M", "112 GB"
  progress   ProgressStore, order_cards             what was missed, what comes next
  session    DrillSession                           one pass over the ordered cards
  whiteboard grade_whiteboard                       a whiteboard card's code, graded by the chapter's grader
  mock       MockSession, Countdown                 the timed mock: order, clock, score by topic, what to revisit
  generators GENERATORS                             generated numeric questions (imports torch: not imported here)
  terminal   run_drill, run_mock, main              the terminal shell (`python -m efftrain_lib.drill`)
  widget     Quiz, quiz                             the notebook shell (ipywidgets)
  mock_widget MockQuiz, mock_interview              the mock's notebook shell (imports the generators)

Only the standard library is imported at module level: the CLI starts instantly and works without
torch (figures and generators import it: the first only to recompute the cache, the second for --mock,
loaded by name); ipywidgets is imported when a widget is first built.
"""

from efftrain_lib.chapters import CHAPTERS
from efftrain_lib.drill.answers import (
    NUMBER_FORMS,
    NumericCheck,
    UnreadableAnswer,
    check_numeric,
    classic_mistake,
    explain_numeric,
    format_number,
    parse_number,
)
from efftrain_lib.drill.bank import (
    DEFAULT_TOLERANCE,
    FIGURES_FILE,
    BankError,
    Card,
    cards_for,
    chapter_key,
    default_bank_path,
    load_bank,
    read_figures,
    validate_cards,
)
from efftrain_lib.drill.progress import (
    PROGRESS_ENV,
    CardStats,
    ProgressError,
    ProgressStore,
    card_status,
    default_progress_path,
    order_cards,
)
from efftrain_lib.drill.mock import Countdown, MockSession
from efftrain_lib.drill.session import DrillSession
from efftrain_lib.drill.terminal import main, run_drill, run_mock
from efftrain_lib.drill.whiteboard import grade_whiteboard
from efftrain_lib.drill.widget import Quiz, quiz

__all__ = [
    "CHAPTERS",
    "chapter_key",
    "DEFAULT_TOLERANCE",
    "NUMBER_FORMS",
    "PROGRESS_ENV",
    "BankError",
    "ProgressError",
    "Card",
    "CardStats",
    "NumericCheck",
    "UnreadableAnswer",
    "default_bank_path",
    "FIGURES_FILE",
    "load_bank",
    "read_figures",
    "validate_cards",
    "cards_for",
    "parse_number",
    "check_numeric",
    "classic_mistake",
    "explain_numeric",
    "format_number",
    "default_progress_path",
    "ProgressStore",
    "order_cards",
    "card_status",
    "DrillSession",
    "Countdown",
    "MockSession",
    "grade_whiteboard",
    "run_drill",
    "run_mock",
    "main",
    "Quiz",
    "quiz",
]

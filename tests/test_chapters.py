"""The one chapter registry (efftrain_lib/chapters.py): every chapter's files exist, every name resolves
to one chapter only, unknown names get an error that lists what is allowed, and each entry point
(grader, notebook check(), drill CLI, quiz) accepts every alias."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from efftrain_lib import chapters, drill
from efftrain_lib.chapters import CHAPTERS, Chapter, UnknownChapter, register, resolve

ROOT = Path(__file__).resolve().parents[1]
COURSE = list(CHAPTERS.values())
by_key = pytest.mark.parametrize("chapter", COURSE, ids=lambda c: c.key)


@by_key
def test_every_chapter_has_its_files(chapter):
    assert (ROOT / "exercises" / chapter.filename).is_file()
    assert (ROOT / "solutions" / chapter.filename).is_file()
    grader = importlib.import_module(chapter.grader)
    assert len(grader.CHECKS) > 0
    if chapter.notebook:
        assert (ROOT / "notebooks" / chapter.notebook).is_file()
        assert (ROOT / "notebooks" / "src" / f"{chapter.notebook_stem}.py").is_file()


def test_the_course_is_numbered_in_order_and_keyed_by_exercise_file():
    numbers = [c.number for c in COURSE]
    # In course order from 0; a gap is allowed while chapters are written in parallel (6 before 5).
    assert numbers[:5] == list(range(5)) and numbers == sorted(set(numbers))
    assert list(CHAPTERS)[:5] == ["memory_math", "lora", "checkpointing", "loss_scaling", "accumulation"]
    for c in COURSE:
        assert c.filename == f"{c.key}.py" and c.grader == f"efftrain_lib.grading.{c.key}"
        assert c.notebook.startswith(f"{c.number:02d}_")


def test_every_name_belongs_to_one_chapter_and_resolves_to_it():
    owners: dict[str, str] = {}
    for c in COURSE:
        for name in c.names:
            assert owners.setdefault(name, c.key) == c.key, f"{name!r} names {owners[name]!r} and {c.key!r}"
            assert resolve(name) is c
    assert len(owners) >= 4 * len(COURSE)  # key, number, zero-padded number, notebook at least


@pytest.mark.parametrize(
    "name, key",
    [
        ("memory", "memory_math"), ("00", "memory_math"), (0, "memory_math"), ("0", "memory_math"),
        ("00_memory_anatomy", "memory_math"), ("00_memory_anatomy.ipynb", "memory_math"),
        ("notebooks/00_memory_anatomy.ipynb", "memory_math"), ("memory_math.py", "memory_math"),
        ("precision", "loss_scaling"), ("Mixed-Precision", "loss_scaling"), ("03", "loss_scaling"),
        (" LoRA ", "lora"), ("gradient checkpointing", "checkpointing"), ("4", "accumulation"),
    ],
)
def test_aliases_resolve(name, key):
    assert resolve(name).key == key


@pytest.mark.parametrize("name", ["quantization", "", "09", "memory math x", None, 1.0, True, ["lora"]])
def test_unknown_name_lists_what_is_allowed(name):
    with pytest.raises(UnknownChapter) as info:
        resolve(name)
    message = str(info.value)
    for c in COURSE:
        assert c.key in message
    assert "memory_math (also 0, 00, memory" in message or "memory_math (also memory" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, LookupError)


def test_register_adds_a_chapter_and_refuses_a_clash(monkeypatch):
    monkeypatch.setattr(chapters, "CHAPTERS", dict(CHAPTERS))  # leave the course's registry as it was
    later = register("distributed", number=5, title="Distributed training", notebook="05_distributed.ipynb",
                     aliases=("ddp",))
    assert later.grader == "efftrain_lib.grading.distributed" and later.filename == "distributed.py"
    assert chapters.resolve("05") is chapters.resolve("ddp") is chapters.resolve("05_distributed") is later
    with pytest.raises(ValueError, match="'ddp' already name.*'distributed'"):
        register("other", aliases=("ddp",))
    with pytest.raises(ValueError, match="'1' already name.*'lora'"):
        register("other", number=1)
    # The old positional form of grading.register (key, grader, file, notebook, title) still works.
    demo = register("demo", "_demo_grader", "demo.py", "notebooks/99_demo.ipynb", "Demo")
    assert (demo.grader, demo.filename, demo.notebook, demo.title) == ("_demo_grader", "demo.py",
                                                                       "99_demo.ipynb", "Demo")


@pytest.mark.parametrize(
    "fields, problem",
    [
        (dict(key="Memory"), "module name"), (dict(key="lora", number=-1), "number"),
        (dict(key="lora", number=True), "number"),
        (dict(key="lora", notebook="01_lora.py"), "notebook"), (dict(key="lora", aliases=("Bad Alias",)), "alias"),
    ],
)
def test_bad_entries_are_refused(fields, problem):
    with pytest.raises(ValueError, match=problem):
        Chapter(**{"number": None, "title": "x", **fields})


def test_the_grading_package_reads_the_same_registry():
    from efftrain_lib import grading

    assert grading.CHAPTERS is chapters.CHAPTERS and grading.Chapter is Chapter


# -------------------------------------------------------------------------- every entry point --
def test_grade_and_check_accept_aliases():
    from efftrain_lib.grade import check, grade

    report = check("00", "solutions", exercise="0.1")
    assert report.chapter == "memory_math" and report.all_passed
    assert grade("memory", "solutions", exercise="0.1").all_passed


def test_grade_cli_accepts_an_alias_and_explains_an_unknown_name():
    run = [sys.executable, "-m", "efftrain_lib.grade"]
    env_root = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 120}
    ok = subprocess.run([*run, "memory", "--impl", "solutions", "--exercise", "0.1"], **env_root)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Grading memory_math" in ok.stdout
    bad = subprocess.run([*run, "quantization"], **env_root)
    assert bad.returncode == 2 and "unknown chapter 'quantization'" in bad.stderr and "memory_math" in bad.stderr


@pytest.mark.parametrize("name", ["memory_math", "memory", "00", "00_memory_anatomy"])
def test_drill_cli_and_quiz_accept_every_name(name, tmp_path):
    out = io.StringIO()
    assert drill.main(["--list", "--chapter", name, "--progress", str(tmp_path / "p.json")], out=out) == 0
    header, *rows = out.getvalue().splitlines()
    n = sum(c.chapter == "memory_math" for c in drill.load_bank())
    assert header.startswith(f"{n} cards") and len(rows) == n
    assert all(row.split()[2].startswith("mem-") for row in rows)  # status, difficulty, id, question
    q = drill.quiz(name, progress=drill.ProgressStore.in_memory())
    assert q.chapter == "memory_math" and len(q.session.queue) == n


def test_drill_bank_uses_canonical_keys():
    assert {c.chapter for c in drill.load_bank()} == set(CHAPTERS)
    good = {"id": "x", "difficulty": 1, "question": "Q?", "answer": "A."}
    with pytest.raises(drill.BankError, match="write the chapter's key 'loss_scaling', not its alias 'precision'"):
        drill.validate_cards({"card": [{**good, "chapter": "precision"}]})

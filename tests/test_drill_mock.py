"""The mock interview: the countdown, the order (missed first, generated and whiteboard questions mixed in),
the end (score by topic, three topics to revisit), the generators (each against an independent
computation over many draws), whiteboard code graded by the chapter's grader, the terminal and the widget.
No timed assertions: every clock here is a fake one the test moves."""

from __future__ import annotations

import io
import math
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from efftrain_lib.chapters import CHAPTERS
from efftrain_lib.drill import ProgressStore, check_numeric, explain_numeric, load_bank, main, validate_cards
from efftrain_lib.drill.generators import GENERATORS
from efftrain_lib.drill.mock import Countdown, MockSession, clock_text, mock_order, parse_minutes
from efftrain_lib.drill.mock_widget import MockQuiz, mock_interview
from efftrain_lib.drill.terminal import run_mock
from efftrain_lib.drill.whiteboard import grade_whiteboard

ROOT = Path(__file__).resolve().parents[1]
BANK = load_bank()
BY_ID = {c.id: c for c in BANK}
DRAWS = 30


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# ------------------------------------------------------------------------------------------------
# The countdown
# ------------------------------------------------------------------------------------------------

def test_countdown_reads_the_clock():
    clock = FakeClock()
    c = Countdown(90, clock, start=False)
    assert not c.started and c.remaining == 90 and c.text() == "01:30"
    clock.advance(50)
    assert c.remaining == 90  # not started: nothing elapses
    c.start()
    clock.advance(29.2)
    assert c.text() == "01:01" and not c.expired  # rounded up: 00:00 only when the time is up
    assert c.fraction_left == pytest.approx(60.8 / 90)
    clock.advance(60.79)
    assert c.text() == "00:01" and not c.expired
    clock.advance(0.02)
    assert c.expired and c.text() == "00:00" and c.remaining == 0 and c.elapsed == 90
    c.start()  # starting again changes nothing
    assert c.expired
    assert clock_text(3723) == "1:02:03"


@pytest.mark.parametrize("bad", [0, -5, "ten", float("nan"), float("inf"), 24 * 60 + 1, True, None])
def test_minutes_must_be_a_sensible_number(bad):
    with pytest.raises(ValueError, match="number of minutes > 0"):
        parse_minutes(bad)
    assert parse_minutes("7.5") == 7.5


def test_countdown_refuses_a_bad_length():
    with pytest.raises(ValueError, match="finite number of seconds > 0"):
        Countdown(0)


# ------------------------------------------------------------------------------------------------
# The order and the end
# ------------------------------------------------------------------------------------------------

def _some_cards():
    return [BY_ID[cid] for cid in ("lora-param-ratio", "lora-rslora", "ckpt-when", "prec-fp16-max", "acc-cost",
                                   "dist-zero-stages", "qlora-bits-plain", "mem-peak-not-sum",
                                   "acc-whiteboard-accumulation-step", "lora-whiteboard-loralinear")]


def test_missed_questions_come_first_then_cards_generated_and_whiteboard_mixed():
    store = ProgressStore.in_memory()
    store.record("qlora-bits-plain", False)
    store.record("gen-ring-allreduce", False)
    store.record("gen-ring-allreduce", False)
    store.record("lora-rslora", True)
    gens = [GENERATORS[g] for g in ("gen-lora-params", "gen-ring-allreduce", "gen-fp16-integer")]
    order = [item.id for item in mock_order(_some_cards(), gens, store)]
    assert order[:2] == ["gen-ring-allreduce", "qlora-bits-plain"]  # most misses first
    kinds = ["gen" if i.startswith("gen-") else "wb" if "whiteboard" in i else "card" for i in order[2:]]
    assert kinds[:8] == ["card", "card", "gen", "card", "card", "gen", "card", "wb"]
    assert sorted(order) == sorted([c.id for c in _some_cards()] + [g.id for g in gens])
    assert order[-1] == "lora-rslora" or "lora-rslora" in order[-4:]  # answered correctly: late


def _session(clock, minutes=5, cards=None, store=None, seed=0):
    gens = [GENERATORS["gen-lora-scaling"], GENERATORS["gen-ring-allreduce"]]
    return MockSession(cards or _some_cards(), gens, store or ProgressStore.in_memory(), minutes=minutes, seed=seed,
                       clock=clock)


def test_time_up_stops_after_the_answer_in_progress():
    clock = FakeClock()
    s = _session(clock, minutes=1)
    first = s.current
    s.reveal()
    s.grade(True)
    clock.advance(59)
    s.next()
    assert not s.time_up and s.current is not None
    clock.advance(2)  # the time runs out while the second question is open: it still counts
    s.reveal()
    s.grade(False)
    assert s.next() is None and s.time_up and s.done
    assert [cid for cid, _ in s.results] == [first.id, s.asked[s.results[1][0]].id]
    assert s.report().startswith("Mock interview over (time is up): 1 of 2 correct in 01:00 of 01:00.")


def test_a_generated_question_is_drawn_once_and_checked_with_its_own_numbers():
    clock = FakeClock()
    s = _session(clock)
    while not s.current.id.startswith("gen-"):
        s.next()
    card = s.current
    assert s.current is card  # drawn once
    assert s.check(repr(card.numeric_answer)).correct
    assert s.asked[card.id] is card and s.results[-1] == (card.id, True)
    assert "generated" in s.header() or s.header()  # the header says what it is


def test_score_by_topic_and_three_topics_to_revisit_with_their_sections():
    clock = FakeClock()
    cards = [BY_ID[c] for c in ("lora-param-ratio", "lora-rslora", "ckpt-when", "ckpt-rng-dropout",
                                "prec-fp16-max", "acc-cost", "dist-zero-stages", "qlora-bits-plain")]
    s = MockSession(cards, [], ProgressStore.in_memory(), minutes=30, clock=clock)
    verdicts = {"lora-param-ratio": False, "lora-rslora": True, "ckpt-when": False, "ckpt-rng-dropout": False,
                "prec-fp16-max": True, "acc-cost": False, "dist-zero-stages": False, "qlora-bits-plain": True}
    while not s.done:
        s.grade(verdicts[s.current.id])
        s.next()
    assert s.topic_scores() == {"lora": (1, 2), "checkpointing": (0, 2), "loss_scaling": (1, 1),
                                "accumulation": (0, 1), "distributed": (0, 1), "qlora": (1, 1)}
    topics = s.revisit()
    # 0% first, more misses first among equals (checkpointing: 2), then course order; lora (50%) is fourth.
    assert [t.chapter for t in topics] == ["checkpointing", "accumulation", "distributed"]
    assert topics[2].links == ("notebooks/05_distributed.ipynb § 6. Sharding: ZeRO-1 and ZeRO-2 from scratch, "
                               "ZeRO-3 with fully_shard",)
    rng_section = "notebooks/02_gradient_checkpointing.ipynb § 3. The dropout trap: RNG state (and autocast)"
    assert topics[0].links == (rng_section,)  # ckpt-when names no section: only ckpt-rng-dropout's is linked
    assert topics[1].links == ("notebooks/04_gradient_accumulation.ipynb",)  # no missed card names one: the notebook
    report = s.report()
    assert "Score by topic:" in report and f"{CHAPTERS['checkpointing'].label}" in report
    assert f"Topics to revisit:\n  1. Chapter 2: Gradient checkpointing (0/2): {rng_section}" in report
    assert report.startswith("Mock interview over (every question asked): 3 of 8 correct")


def test_a_perfect_or_empty_mock_says_so():
    s = MockSession([BY_ID["ckpt-when"]], [], ProgressStore.in_memory(), minutes=1, clock=FakeClock())
    assert s.report().endswith("No question answered.")
    s.grade(True)
    assert "Nothing missed: no topic to revisit." in s.report()


# ------------------------------------------------------------------------------------------------
# The generators: each against an independent computation
# ------------------------------------------------------------------------------------------------

def _state_bytes(precision, optimizer):
    weight, state, master = {"fp32": (4, 4, 0), "bf16_autocast": (4, 4, 0), "bf16": (2, 2, 0),
                             "fp16_master": (2, 4, 4)}[precision]
    return 2 * weight + {"adam": 2, "sgd_momentum": 1, "sgd": 0}[optimizer] * state + master


def _lora_by_hand(p):
    layers, h, f = p["shape"]
    shape = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
             "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}
    return layers * sum(sum(shape[t]) * p["rank"] for t in p["targets"])


def _scale_by_hand(p):
    scale, finite_run = 2.0 ** p["init_exp"], 0
    for overflow in p["overflows"]:
        if overflow:
            scale, finite_run = scale / 2, 0
        else:
            finite_run += 1
            if finite_run == p["interval"]:
                scale, finite_run = scale * 2, 0
    return scale


def _zero_by_hand(p):
    w, g, o = (2, 2, 12) if p["policy"] == "mixed" else (4, 4, 8)
    n, st = p["devices"], p["stage"]
    return p["billions"] * (w / (n if st >= 3 else 1) + g / (n if st >= 2 else 1) + o / (n if st >= 1 else 1))


def _base_by_hand(p):
    bits = {"int8": 8 + 32 / p["block"], "nf4": 4 + 32 / p["block"],
            "nf4_dq": 4 + 8 / p["block"] + 32 / (p["block"] * 256)}[p["fmt"]]
    return p["billions"] * bits / 8


INDEPENDENT = {
    "gen-model-states": lambda p: p["billions"] * _state_bytes(p["precision"], p["optimizer"]),
    "gen-activations": lambda p: (lambda h, a, n: n * p["seq"] * p["batch"] * h * {
        "none": 34 + 5 * a * p["seq"] / h, "selective": 34, "full": 2}[p["recompute"]] / 1e9)(*p["shape"]),
    "gen-lora-params": _lora_by_hand,
    "gen-lora-scaling": lambda p: p["alpha"] / (math.sqrt(p["rank"]) if p["rslora"] else p["rank"]),
    "gen-ckpt-sequential": lambda p: p["functions"] - (p["segments"] - 1) * (p["functions"] // p["segments"]),
    "gen-mfu": lambda p: p["hfu"] * (2 + (2 if p["lora"] else 4)) / (4 + (2 if p["lora"] else 4)),
    "gen-loss-scale": _scale_by_hand,
    "gen-fp16-integer": lambda p: struct.unpack("<e", struct.pack("<e", p["n"]))[0],
    "gen-token-mean": lambda p: sum(map(sum, p["micro"])) / sum(map(len, p["micro"])),
    "gen-zero-model-states": _zero_by_hand,
    "gen-ring-allreduce": lambda p: 2 * (p["ranks"] - 1) / p["ranks"] * p["mb"],
    "gen-quantized-base": _base_by_hand,
    "gen-8bit-state": lambda p: 8 * p["n"] if p["n"] < 4096 else 2 * (p["n"] + 4 * math.ceil(p["n"] / 2048)),
    "gen-plan-step-time": lambda p: (2 + (2 if p["lora"] else 4) + 2 * p["fraction"]) / 6 / (p["speedup"] or 1),
}


def test_at_least_ten_generators_across_the_chapters_each_checked_independently():
    assert len(GENERATORS) >= 10 and set(GENERATORS) == set(INDEPENDENT)
    assert {g.chapter for g in GENERATORS.values()} == set(CHAPTERS)


@pytest.mark.parametrize("gen_id", sorted(INDEPENDENT))
def test_each_generator_matches_an_independent_computation(gen_id):
    gen, rng = GENERATORS[gen_id], random.Random(f"independent {gen_id}")
    answers = set()
    for _ in range(DRAWS):
        params = gen.draw(rng)
        card = gen.card(params)
        expected = INDEPENDENT[gen_id](params)
        assert math.isclose(card.numeric_answer, expected, rel_tol=1e-6), (params, card.numeric_answer, expected)
        # The learner's side: the drill's parser, the stated tolerance, the classic mistakes named.
        assert check_numeric(card, repr(expected))
        if card.rel_tol >= 1e-5:  # six significant digits are close enough, except for an exact answer
            assert check_numeric(card, f"{expected:.6g}")
        for why, wrong in card.wrong_answers:
            result = explain_numeric(card, repr(wrong))
            assert result.correct is False, (params, why, wrong)
            assert why in result.message
        assert card.chapter == gen.chapter and card.section and card.how.startswith("generated; computed now by")
        answers.add(card.numeric_answer)
    assert len(answers) >= 5, f"{gen_id} draws too few different questions to resist memorising"


def test_generated_cards_are_valid_bank_cards():
    rng = random.Random(1)
    raws = []
    for gen in GENERATORS.values():
        card = gen.ask(rng)
        raws.append({"id": card.id, "chapter": card.chapter, "difficulty": card.difficulty, "question": card.question,
                     "answer": card.answer, "numeric_answer": card.numeric_answer, "tolerance": card.tolerance,
                     **({"unit": card.unit} if card.unit else {}), "section": card.section})
    assert len(validate_cards({"card": raws})) == len(GENERATORS)
    assert not set(GENERATORS) & set(BY_ID)  # a generator's progress never mixes with a card's


# ------------------------------------------------------------------------------------------------
# Whiteboard cards: the chapter's grader checks the code
# ------------------------------------------------------------------------------------------------

WHITEBOARD = [c for c in BANK if c.is_whiteboard]


def test_whiteboard_cards_name_an_exercise_their_chapter_grades():
    assert {c.id for c in WHITEBOARD} >= {"acc-whiteboard-accumulation-step", "ckpt-whiteboard-checkpoint"}
    for card in WHITEBOARD:
        solution = (ROOT / "solutions" / CHAPTERS[card.chapter].filename).read_text()
        assert f"Exercise {card.exercise}" in solution, card.id


@pytest.mark.parametrize("card", WHITEBOARD, ids=lambda c: c.id)
def test_the_solution_passes_and_the_stub_fails(card):
    filename = CHAPTERS[card.chapter].filename
    passed = grade_whiteboard(card, (ROOT / "solutions" / filename).read_text())
    assert passed.all_passed, passed.to_text()
    assert {r.exercise for r in passed.results} == {card.exercise}  # only the card's exercise is graded
    stub = grade_whiteboard(card, (ROOT / "exercises" / filename).read_text())
    assert not stub.all_passed and "not implemented yet" in stub.summary()


def test_a_classic_whiteboard_mistake_is_caught_and_named():
    card = BY_ID["acc-whiteboard-accumulation-step"]
    solution = (ROOT / "solutions" / "accumulation.py").read_text()
    piece = "_summed_loss(model, optimizer, inputs, labels, autocast_dtype) / n_tokens"
    assert solution.count(piece) == 1
    # The 2024 bug: each micro-batch's own token mean, divided by k.
    mean_of_means = solution.replace(piece, "_summed_loss(model, optimizer, inputs, labels, autocast_dtype) "
                                            "/ int((labels != IGNORE_INDEX).sum()) / len(micro_batches)")
    report = grade_whiteboard(card, mean_of_means)
    assert not report.all_passed
    assert re.search(r"token|mean of (micro-batch )?means|count", report.summary(), re.I), report.summary()


def test_whiteboard_grading_refuses_what_it_cannot_grade():
    with pytest.raises(ValueError, match="not a whiteboard card"):
        grade_whiteboard(BY_ID["ckpt-when"], "x = 1")
    with pytest.raises(ValueError, match="no code to grade"):
        grade_whiteboard(BY_ID["ckpt-whiteboard-checkpoint"], "   ")


# ------------------------------------------------------------------------------------------------
# The terminal
# ------------------------------------------------------------------------------------------------

def test_terminal_mock_grades_a_file_answers_numbers_and_ends_with_the_report(tmp_path):
    clock = FakeClock()
    answer = tmp_path / "answer.py"
    answer.write_text((ROOT / "solutions" / "accumulation.py").read_text())
    cards = [BY_ID["prec-fp16-max"], BY_ID["ckpt-when"], BY_ID["acc-whiteboard-accumulation-step"],
             BY_ID["ckpt-whiteboard-checkpoint"]]
    # The mock's order: the two cards, then (no generator here) the whiteboard cards.
    lines = iter(["65536", "", "y", str(tmp_path / "missing.py"), str(answer)])

    def read():
        line = next(lines)
        clock.advance(100)  # every answer takes 100 s of the 5.5 minutes
        return line

    out = io.StringIO()
    store = ProgressStore(tmp_path / "p.json")
    s = run_mock(cards, [], store, minutes=5.5, inp=read, out=out, clock=clock)
    text = out.getvalue()
    assert "That is the classic mistake: 2^16." in text
    assert "Could not grade" in text and "checks passed for accumulation" in text
    assert s.results == [("prec-fp16-max", False), ("ckpt-when", True), ("acc-whiteboard-accumulation-step", True)]
    assert "Time is up." in text and "Score by topic:" in text and "Topics to revisit:" in text
    assert "[3] 00:30 left · acc-whiteboard-accumulation-step · Gradient accumulation · whiteboard" in text
    assert "ckpt-whiteboard-checkpoint" not in text  # the time ran out before it
    assert store.stats("prec-fp16-max").misses == 1 and store.stats("acc-whiteboard-accumulation-step").corrects == 1


def test_cli_mock_rejects_bad_minutes_and_combinations(capsys):
    for argv in (["--mock", "0"], ["--mock", "soon"], ["--mock", "5", "--list"], ["--mock", "5", "--limit", "3"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "number of minutes > 0" in err and "does not combine" in err


def test_cli_mock_runs_without_stdin(tmp_path):
    result = subprocess.run([sys.executable, "-m", "efftrain_lib.drill", "--mock", "3", "--chapter", "lora",
                             "--progress", str(tmp_path / "p.json")], cwd=ROOT, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
                                                                             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "Mock interview: 3 minutes" in result.stdout and "End of input: stopping." in result.stdout
    assert "Mock interview over (stopped): 0 of 0 correct" in result.stdout


# ------------------------------------------------------------------------------------------------
# The notebook widget: the logic without a browser
# ------------------------------------------------------------------------------------------------

def test_mock_widget_starts_ticks_grades_and_reports(tmp_path):
    clock = FakeClock()
    q = mock_interview(2, "accumulation", progress=ProgressStore.in_memory(), seed=0, clock=clock)
    assert isinstance(q, MockQuiz)
    assert "2 minutes (2 minutes: press Start)" in repr(q) and "--mock 2" in repr(q)
    assert "gen-" not in repr(q) and "whiteboard" not in repr(q)  # nothing of the first question before Start
    box = q.widget
    assert q.start_button.layout.display is None and q.question_label.layout.display == "none"
    assert q.header_label.value == "<b>Mock interview: accumulation, 2 minutes</b>"
    assert q.buttons_row.layout.display == "none"
    q.start_button.click()
    assert q.ticker.playing and "02:00 left" in q.clock_label.value and q.question_label.layout.display is None
    clock.advance(61)
    q.ticker.value += 1  # what the browser does every second
    assert "00:59 left" in q.clock_label.value and "#cf222e" in q.clock_label.value and q.clock_bar.value < 0.5
    while not q.session.current.is_whiteboard:
        q.reveal()
        q.grade_and_next(True)
    assert q.code_row.layout.display is None
    q.code_box.value = "   "
    q.grade_button.click()
    assert "Not graded: no code to grade" in q.feedback.value and not q.session.graded
    q.code_box.value = (ROOT / "solutions" / "accumulation.py").read_text()
    q.grade_button.click()
    assert q.session.results[-1] == ("acc-whiteboard-accumulation-step", True) and "checks passed" in q.feedback.value
    assert q.code_row.layout.display == "none"
    clock.advance(60)
    q.ticker.value += 1
    assert not q.ticker.playing and "time is up" in q.clock_label.value
    q.next_button.click()
    assert q.session.done and "Score by topic:" in q.question_label.value and "Mock interview over (time is up)" in repr(q)
    assert box is q.widget


def test_mock_widget_before_start_asks_nothing():
    q = mock_interview(1, progress=ProgressStore.in_memory(), clock=FakeClock())
    assert "all, 1 minute (1 minute: press Start)" in repr(q)
    assert q.next() is q.session.current and q.session.index == 0  # Next before Start does not skip
    assert q.check_code("x = 1") is None

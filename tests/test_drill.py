"""The interview drill: the question bank, number parsing, progress ordering, the terminal loop,
the CLI and the notebook quiz object. All fast, no browser, no stdin."""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from efftrain_lib import drill
from efftrain_lib.drill import (
    CHAPTERS,
    BankError,
    DrillSession,
    ProgressError,
    ProgressStore,
    UnreadableAnswer,
    check_numeric,
    load_bank,
    order_cards,
    parse_number,
    quiz,
    run_drill,
    validate_cards,
)

ROOT = Path(__file__).resolve().parents[1]
BANK = load_bank()
BY_ID = {c.id: c for c in BANK}


# ------------------------------------------------------------------------------------------------
# Every number in the bank, recomputed here from first principles
# ------------------------------------------------------------------------------------------------

D = K = 4096
R = 8
LLAMA_LAYERS, LLAMA_FFN, LLAMA_VOCAB = 32, 11008, 32000
LLAMA7B = LLAMA_LAYERS * (4 * D * D + 3 * D * LLAMA_FFN + 2 * D) + D + 2 * LLAMA_VOCAB * D
QV_R8 = LLAMA_LAYERS * 2 * (D + K) * R  # q_proj and v_proj in every layer
FP16_MAX = struct.unpack("<e", bytes([0xFF, 0x7B]))[0]  # bit pattern 0 11110 1111111111
FP16_MIN_SUBNORMAL = struct.unpack("<e", bytes([0x01, 0x00]))[0]

COMPUTED = {
    "lora-param-ratio": (D + K) * R / (D * K) * 100,
    "lora-llama7b-qv-params": QV_R8,
    "lora-llama7b-qv-fraction": QV_R8 / LLAMA7B * 100,
    "lora-adam-state": QV_R8 * 2 * 4 / 2**20,  # m and v, fp32, in MiB
    "lora-checkpoint-size": QV_R8 * 4 / 2**20,  # fp32 tensors, in MiB
    "lora-gpt3-headlines": 10_000,  # the paper's stated headline, not derivable from shapes
    "lora-rslora": 16 / math.sqrt(64),
    "lora-qlora-nf4-weights": 65e9 * 4 / 8 / 1e9,
    "lora-update-rank": min(R, D, K),
    "lora-mlp-params-r16": (D + LLAMA_FFN) * 16,
    "lora-all-linear-params": LLAMA_LAYERS * (4 * (D + D) * R + 3 * (D + LLAMA_FFN) * R),
    "mem-7b-fp32-adam": 7e9 * (4 + 4 + 8) / 1e9,
    "mem-activations-estimate": LLAMA_LAYERS * 2048 * 1 * 4096 * (34 + 5 * 32 * 2048 / 4096) / 1e9,
    "mem-llama7b-params": LLAMA7B,
    "mem-adam-state-7b": 7e9 * 2 * 4 / 1e9,  # m and v, fp32, in GB
    "mem-bf16-autocast-bytes-per-param": 4 + 4 + 8 + 2,  # fp32 weights, grads, m, v + bf16 weight copies
    "mem-sgd-momentum-7b": 7e9 * (4 + 4 + 4) / 1e9,
    "mem-accelerate-bf16-line": max(4, 4 + 2, 8, 8),  # accelerate's estimate_training_usage, largest entry
    "ckpt-extra-compute": 2 / 6 * 100,  # one extra forward (2PD) on a 6PD step
    "ckpt-sqrt-n-64": math.isqrt(64) + 64 // math.isqrt(64),
    "prec-fp16-max": FP16_MAX,
    "prec-fp16-min-subnormal": FP16_MIN_SUBNORMAL,
    "acc-effective-batch": 4 * 8 * 2,
    "acc-token-normalization": (2 + 1 + 1 + 1) / 4,
    "dist-ring-allreduce-bytes": 2 * (4 - 1) / 4 * 100,
    "dist-token-trap-example": (2 + 1 + 1 + 1) / 4,
    "dist-zero1-bytes-per-param": 2 + 2 + 12 / 64,
    "dist-zero-paper-75b": 16 * 7.5e9 / 64 / 1e9,
    "dist-zero2-fp32-bytes": 4 + (4 + 8) / 4,
    "dist-zero3-communication": 3 / 2,
    "dist-70b-gpus-zero3": 18,  # the course's estimator (memory_advisor.devices_needed); not independent
    "dist-lora-ddp-bytes": LLAMA_LAYERS * 2 * (D + K) * R * 4 / 1e6,
    "qlora-bits-plain": 4 + 32 / 64,
    "qlora-bits-double-quant": 4 + 8 / 64 + 32 / (64 * 256),
    "qlora-double-quant-saving-65b": 65e9 * ((4 + 32 / 64) - (4 + 8 / 64 + 32 / (64 * 256))) / 8 / 1e9,
    "qlora-65b-base-gb": 65e9 * (4 + 8 / 64 + 32 / (64 * 256)) / 8 / 1e9,
    "qlora-full-finetune-65b": 65e9 * (2 + 2 + 4 + 4) / 1e9,
    "qlora-8bit-adam-bytes": 2 * (1 + 4 / 2048),
    "mem-optimizer-state-8bit": 7e9 * 2 * (1 + 4 / 2048) / 1e9,
    "mem-adafactor-state": (11008 + 4096) * 4 / 1e3,  # a row and a column of fp32, in KB
    "mem-optimizer-step-peak": LLAMA7B * (4 + 4 + 8 + 4) / 1e9,  # + foreach's sqrt(v): 20 bytes/param
    "mem-logits-memory": 8192 * 128256 * 4 / 1e9,
    "mem-cuda-allocator-rounding": math.ceil(1000 * 4 / 512) * 512,
    "ckpt-activation-offload": 2 * 14.733e9 / (16e9 * 16 * 128 / 130 / 8),  # the estimator's bf16 activations
    "ckpt-lora-recompute-cost": 2 / (2 + 2) * 100,  # an extra forward on a forward + activation-gradient step
    "ckpt-mfu-vs-hfu": 50 * 6 / 8,
    "prec-fp8-e4m3-max": (1 + 6 / 8) * 2.0 ** (15 - 7),  # S.1111.110: the top exponent holds numbers
    "prec-fp8-e5m2-max": (1 + 3 / 4) * 2.0 ** (30 - 15),  # S.11110.11
    "prec-tf32-mantissa": 10,
    "acc-large-batch-lr": 0.1 * 8192 / 256,
    "mem-autocast-activations-ratio": 14.989 / 21.989,  # chapter 3's section 8 table of the same step, in MiB
    "capstone-7b-full-finetune-model-states": 16 * LLAMA7B / 1e9,
    "capstone-zero3-gpus-for-7b": math.ceil(16 * LLAMA7B / 24e9),
    "capstone-checkpointing-time": (2 + 4 + 2) / 6,
    "capstone-lora-time": (2 + 2) / 6,
    "capstone-24gb-in-gib": 24e9 / 2**30,
}

SEED_LORA_IDS = [
    "lora-what-is-lora",
    "lora-init-b-zero-a-kaiming",
    "lora-a-also-zero",
    "lora-param-ratio",
    "lora-trains-point1-percent",
    "lora-which-rank",
    "lora-which-layers",
    "lora-why-not-k",
    "lora-cost-slightly-worse",
    "lora-what-it-solves",
    "lora-alpha-scaling",
    "lora-merge-unmerge",
    "lora-dropout-branch",
    "lora-target-modules-matching",
    "lora-bias-trainable",
]
# Topics the course promises beyond the seed.
LORA_TOPICS = [
    "lora-rslora",
    "lora-inference-latency",
    "lora-llama7b-qv-params",
    "lora-adam-state",
    "lora-checkpoint-size",
    "lora-qlora-headline",
    "lora-dora",
    "lora-embedding-init",
    "lora-grad-b-step0",
    "lora-update-rank",
    "lora-gpt3-headlines",
]
SEED_OTHER_IDS = {
    "memory_math": ["mem-7b-fp32-adam", "mem-mixed-precision-halves", "mem-which-technique"],
    "checkpointing": ["ckpt-what-and-cost", "ckpt-sqrt-n", "ckpt-when", "ckpt-manual-implementation"],
    "loss_scaling": ["prec-why-loss-scaling", "prec-bf16-vs-fp16", "prec-fp32-ops", "prec-dynamic-scaler"],
    "accumulation": ["acc-effective-batch", "acc-loss-division", "acc-equivalence", "acc-cost"],
}


# ------------------------------------------------------------------------------------------------
# The bank
# ------------------------------------------------------------------------------------------------


def test_bank_loads_and_every_chapter_has_cards():
    counts = {ch: sum(c.chapter == ch for c in BANK) for ch in CHAPTERS}
    assert all(n >= 5 for n in counts.values()), counts
    assert counts["lora"] >= 25, counts


def test_every_seed_lora_question_is_in_the_bank():
    for cid in SEED_LORA_IDS:
        assert cid in BY_ID, f"seed LoRA question {cid!r} is missing"
        assert BY_ID[cid].chapter == "lora" and BY_ID[cid].source == "seed", cid
    for cid in LORA_TOPICS:
        assert BY_ID[cid].chapter == "lora", cid
    for chapter, ids in SEED_OTHER_IDS.items():
        for cid in ids:
            assert BY_ID[cid].chapter == chapter and BY_ID[cid].source == "seed", cid


def test_key_facts_are_stated():
    # The parts of the answers an interviewer listens for.
    assert "73.7" in BY_ID["lora-which-layers"].answer and "r2 73.7" in BY_ID["lora-which-layers"].answer
    assert "0.39" in BY_ID["lora-trains-point1-percent"].answer
    assert "4,194,304" in BY_ID["lora-llama7b-qv-params"].answer
    assert "sqrt(r)" in BY_ID["lora-rslora"].answer
    assert "48 GB" in BY_ID["lora-qlora-headline"].answer and "65B" in BY_ID["lora-qlora-headline"].answer
    assert "zeros" in BY_ID["lora-embedding-init"].answer and "normal" in BY_ID["lora-embedding-init"].answer
    assert "ends with" in BY_ID["lora-target-modules-matching"].answer
    assert "损失缩放" in BY_ID["prec-why-loss-scaling"].question


@pytest.mark.parametrize("card", [c for c in BANK if c.is_numeric], ids=lambda c: c.id)
def test_numeric_answer_is_recomputed_and_checks_itself(card):
    assert card.id in COMPUTED, f"numeric card {card.id!r} needs an independent computation in COMPUTED"
    computed = COMPUTED[card.id]
    assert math.isclose(card.numeric_answer, computed, rel_tol=5e-3), (card.numeric_answer, computed)
    assert check_numeric(card, repr(float(computed)))
    # Its own stored answer, bare and with the unit, passes; 10% off either way fails.
    assert check_numeric(card, repr(card.numeric_answer))
    if card.unit:
        assert check_numeric(card, f"{card.numeric_answer!r} {card.unit}")
    assert not check_numeric(card, repr(card.numeric_answer * 1.1))
    assert not check_numeric(card, repr(card.numeric_answer * 0.9))


def test_every_numeric_card_in_computed_exists():
    assert set(COMPUTED) == {c.id for c in BANK if c.is_numeric}


def _headings(stem: str) -> set[str]:
    """Markdown headings of a notebook, from its percent-format source or the .ipynb itself."""
    src = ROOT / "notebooks" / "src" / f"{stem}.py"
    nb = ROOT / "notebooks" / f"{stem}.ipynb"
    if src.exists():
        lines = [line[2:] for line in src.read_text(encoding="utf-8").splitlines() if line.startswith("# ")]
    elif nb.exists():
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        lines = [ln for c in cells if c["cell_type"] == "markdown" for ln in "".join(c["source"]).splitlines()]
    else:
        return set()
    return {ln.lstrip("#").strip() for ln in lines if re.match(r"#+ ", ln)}


@pytest.mark.parametrize("card", [c for c in BANK if c.section], ids=lambda c: c.id)
def test_section_pointers_name_a_real_heading(card):
    notebook, heading = card.section.split(" § ", 1)
    headings = _headings(notebook.removesuffix(".ipynb"))
    assert headings, f"{card.id}: section points to {notebook}, which does not exist"
    assert heading in headings, f"{card.id}: no heading {heading!r} in {notebook}; update the pointer"


# ------------------------------------------------------------------------------------------------
# Malformed banks: every error names the card and the field
# ------------------------------------------------------------------------------------------------

GOOD = {"id": "x-card", "chapter": "lora", "difficulty": 2, "question": "Q?", "answer": "A."}


def _toml_value(v):
    return json.dumps(v)  # JSON strings, ints, floats and bools are valid TOML values


def _write_bank(tmp_path, cards, name="bank.toml"):
    text = "".join(
        "[[card]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in card.items()) + "\n" for card in cards
    )
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_tmp_bank_loads(tmp_path):
    cards = load_bank(_write_bank(tmp_path, [GOOD, {**GOOD, "id": "y", "numeric_answer": 3, "unit": "GB"}]))
    assert [c.id for c in cards] == ["x-card", "y"]
    assert cards[1].rel_tol == drill.DEFAULT_TOLERANCE


@pytest.mark.parametrize(
    "card, field, words",
    [
        ({k: v for k, v in GOOD.items() if k != "answer"}, "answer", "missing"),
        ({**GOOD, "chapter": "quantization"}, "chapter", "unknown chapter 'quantization'"),
        ({**GOOD, "difficulty": 4}, "difficulty", "1, 2 or 3"),
        ({**GOOD, "difficulty": 0}, "difficulty", "1, 2 or 3"),
        ({**GOOD, "difficulty": "2"}, "difficulty", "1, 2 or 3"),
        ({**GOOD, "tolerance": 0.05}, "tolerance", "without numeric_answer"),
        ({**GOOD, "unit": "GB"}, "unit", "without numeric_answer"),
        ({**GOOD, "numeric_answer": 1, "tolerance": 1.5}, "tolerance", "[0, 1)"),
        ({**GOOD, "numeric_answer": "many"}, "numeric_answer", "finite number"),
        ({**GOOD, "tolerence": 0.1}, "tolerence", "unknown field"),
        ({**GOOD, "question": "  "}, "question", "non-empty"),
        ({**GOOD, "id": "Not A Slug"}, "id", "slug"),
        ({**GOOD, "section": "somewhere in chapter 1"}, "section", ".ipynb §"),
    ],
)
def test_malformed_card_names_card_and_field(tmp_path, card, field, words):
    with pytest.raises(BankError) as info:
        load_bank(_write_bank(tmp_path, [{**GOOD, "id": "fine"}, card]))
    message = str(info.value)
    assert "card #2" in message and f"field {field!r}" in message and words in message, message
    assert "bank.toml" in message


def test_duplicate_id_names_both_cards(tmp_path):
    with pytest.raises(BankError, match=r"card #2 \(id 'x-card'\): field 'id': duplicate id, already used by card #1"):
        load_bank(_write_bank(tmp_path, [GOOD, GOOD]))


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(BankError) as info:
        load_bank(_write_bank(tmp_path, [{**GOOD, "difficulty": 9}, {**GOOD, "id": "b", "chapter": "x"}]))
    assert len(info.value.errors) == 2


def test_unreadable_or_empty_banks(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[card]\nid = ", encoding="utf-8")
    with pytest.raises(BankError, match="not valid TOML"):
        load_bank(bad)
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(BankError, match="no cards"):
        load_bank(empty)
    with pytest.raises(BankError, match="file not found"):
        load_bank(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, unit, expected",
    [
        ("4194304", "params", 4194304),
        ("4.19e6", "params", 4.19e6),
        ("4.19E+06", None, 4.19e6),
        ("4,194,304", "params", 4194304),
        ("4_194_304", None, 4194304),
        ("4 194 304", None, 4194304),
        ("4.2M", "params", 4.2e6),
        ("4.2 million params", "params", 4.2e6),
        ("4.2M parameters", "params", 4.2e6),
        ("7B", "params", 7e9),
        ("2^22", "params", 4194304),
        ("2**22", None, 4194304),
        ("2^-24", None, 2**-24),
        ("4.19x10^6", None, 4.19e6),
        ("4.19 * 10**6", None, 4.19e6),
        ("10k", None, 1e4),
        ("112 GB", "GB", 112),
        ("112GB", "GB", 112),
        ("112gb", "GB", 112),
        ("112", "GB", 112),
        ("112G", "GB", 112),
        ("112000 MB", "GB", 112),
        ("104.3 GiB", "GB", 104.3 * 2**30 / 1e9),
        ("16.8 MB", "MiB", 16.8e6 / 2**20),
        ("33.5 million bytes", "MiB", 33.5e6 / 2**20),
        ("0.39%", "%", 0.39),
        ("0.39 percent", "%", 0.39),
        ("0,39", "%", 0.39),
        ("10,000x", "x", 10000),
        ("~1.25", None, 1.25),
        ("≈ 30.6 GB", "GB", 30.6),
        ("-3", None, -3),
        (".5", None, 0.5),
        ("16 layers", "layers", 16),
    ],
)
def test_parse_number_forms(text, unit, expected):
    assert parse_number(text, unit) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "text, unit",
    [("", None), ("abc", None), ("five", "params"), ("12 GB", "params"), ("3 apples", None), ("0.39%", None)],
)
def test_parse_number_rejects_with_a_reason(text, unit):
    with pytest.raises(UnreadableAnswer):
        parse_number(text, unit)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("-8^0.5", "not a real number"),  # Python's (-8.0) ** 0.5 is a complex number
        ("-8**0.5", "not a real number"),
        ("10^400", "out of range"),
        ("0^-1", "out of range"),
        ("1e999", "not a finite number"),
        ("1e308 * 10^10", "not a finite number"),
        ("1x10^" + "9" * 5000, "out of range"),  # int() refuses an exponent of 5,000 digits
        ("9" * 400 + " billion", "not a finite number"),
    ],
)
def test_answers_that_evaluate_to_no_real_number_are_unreadable(text, reason):
    with pytest.raises(UnreadableAnswer, match=reason) as info:
        parse_number(text)
    assert len(str(info.value)) < 120  # a huge answer is not echoed whole
    result = drill.explain_numeric(BY_ID["lora-llama7b-qv-params"], text)
    assert result.correct is None and result.message.startswith("Could not read")


_PIECES = (list("0123456789") * 4 + list(".,eE+-^*x× _%~()/") +
           ["**", "x10^", "*10**", "≈", "about ", "\u202f", "\u00a0", "inf", "nan", "1e308", "9" * 30,
            "k", "M", "B", "T", "bn", "million", "GB", "GiB", "MiB", " bytes", " params", "-0.5", "^0.5"])


def test_parse_number_returns_a_float_or_its_own_error_on_any_input():
    # A seeded fuzz: a few hundred strings of digits, operators and units, each against cards with
    # and without units; anything but a finite float or UnreadableAnswer is a crash in the drill.
    rng = random.Random(20240611)
    texts = ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 10))) for _ in range(400)]
    # and signed powers, which random strings rarely form: "-8^0.5", "-2.5**-1.5", ...
    texts += [f"{rng.choice('+-')}{rng.randint(0, 99)}{rng.choice(['^', '**'])}{rng.choice('+-')}"
              f"{rng.choice(['0.5', '1.5', '3', '0', '400', '1e3'])}" for _ in range(100)]
    readable = 0
    for text in texts:
        for unit in (None, "GB", "params", "%"):
            try:
                value = parse_number(text, unit)
            except UnreadableAnswer:
                continue
            assert type(value) is float and math.isfinite(value), (text, unit, value)
            readable += 1
    assert readable > 50  # the generator does make numbers, not only garbage


def test_check_numeric_llama_qv_params_accepts_the_usual_spellings():
    card = BY_ID["lora-llama7b-qv-params"]
    for text in ["4194304", "4.19e6", "4,194,304", "4.2M", "2^22", "4.194304 million params"]:
        assert check_numeric(card, text), text
    for text in ["4.6M", "419430", "4e7", "not a number", ""]:
        assert not check_numeric(card, text), text


def test_check_numeric_gigabytes():
    card = BY_ID["mem-7b-fp32-adam"]
    for text in ["112 GB", "112GB", "112", "104.3 GiB", "112,000 MB"]:
        assert check_numeric(card, text), text
    for text in ["112 MB", "123 GB", "56 GB"]:
        assert not check_numeric(card, text), text


def test_check_numeric_refuses_a_text_card():
    with pytest.raises(ValueError, match="no numeric_answer"):
        check_numeric(BY_ID["lora-why-not-k"], "3")


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------


def _cards(*ids, numeric=False):
    """Tiny synthetic cards; numeric=True puts a numeric card "n1" (answer 4,194,304 params) first."""
    raw = [{**GOOD, "id": cid} for cid in ids]
    if numeric:
        raw.insert(0, {**GOOD, "id": "n1", "numeric_answer": 4194304, "unit": "params"})
    return validate_cards({"card": raw})


def test_missed_card_comes_back_first(tmp_path):
    cards = _cards("a", "b", "c", "d")
    store = ProgressStore(tmp_path / "p.json")
    assert [c.id for c in order_cards(cards, store)] == ["a", "b", "c", "d"]
    store.record("b", True)
    store.record("c", False)
    assert [c.id for c in order_cards(cards, store)] == ["c", "a", "d", "b"]
    # Reloaded from disk: same order.
    assert [c.id for c in order_cards(cards, ProgressStore(tmp_path / "p.json"))] == ["c", "a", "d", "b"]


def test_order_within_groups(tmp_path):
    cards = _cards("a", "b", "c", "d", "e")
    store = ProgressStore(tmp_path / "p.json")
    store.record("a", False)  # missed once
    store.record("b", False)
    store.record("b", False)  # missed twice: first
    store.record("c", True)
    store.record("c", True)  # two corrects: last
    store.record("d", True)  # one correct, seen before e
    store.record("e", True)
    assert [c.id for c in order_cards(cards, store)] == ["b", "a", "d", "e", "c"]
    # A miss after corrects puts the card back in front (behind the equally missed, longer-waiting a);
    # a correct after a miss moves it back.
    store.record("c", False)
    store.record("b", True)
    assert [c.id for c in order_cards(cards, store)] == ["a", "c", "d", "e", "b"]


def test_order_is_deterministic_given_a_seed(tmp_path):
    cards = _cards(*"abcdefghij")
    store = ProgressStore(tmp_path / "p.json")
    store.record("j", False)
    first = [c.id for c in order_cards(cards, store, seed=3)]
    assert first == [c.id for c in order_cards(cards, store, seed=3)]
    assert first[0] == "j" and sorted(first) == list("abcdefghij")
    orders = {tuple(c.id for c in order_cards(cards, store, seed=s)) for s in range(5)}
    assert len(orders) > 1  # seeds do shuffle the ties


def test_progress_file_location(tmp_path, monkeypatch):
    monkeypatch.setenv(drill.PROGRESS_ENV, str(tmp_path / "env.json"))
    assert ProgressStore().path == tmp_path / "env.json"
    assert ProgressStore(tmp_path / "arg.json").path == tmp_path / "arg.json"  # the parameter wins
    monkeypatch.delenv(drill.PROGRESS_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert drill.default_progress_path() == tmp_path / ".efftrain" / "drill_progress.json"


def test_progress_file_contents_and_reset(tmp_path):
    path = tmp_path / "deep" / "p.json"
    store = ProgressStore(path)
    store.record("a", True)
    store.record("a", False)
    data = json.loads(path.read_text())
    assert data["cards"]["a"] | {"last_seen_at": None} == {
        "attempts": 2, "corrects": 1, "misses": 1, "last_result": "missed", "last_seen": 2, "last_seen_at": None,
    }  # fmt: skip
    assert store.reset(["a", "zzz"]) == 1
    assert json.loads(path.read_text())["cards"] == {}


def test_corrupt_progress_file_says_what_to_do(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ProgressError, match="--reset"):
        ProgressStore(path)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[]", "expected a JSON object"),
        ('{"clock": "3", "cards": {}}', "'clock' must be a whole number"),
        ('{"cards": ["a"]}', "'cards' must be an object"),
        ('{"cards": {"a": [1, 2]}}', "card 'a': expected an object"),
        ('{"cards": {"a": {"attempts": "3"}}}', "card 'a': field 'attempts' must be a whole number >= 0, got '3'"),
        ('{"cards": {"a": {"misses": true}}}', "field 'misses' must be a whole number"),
        ('{"cards": {"a": {"corrects": -1}}}', "field 'corrects' must be a whole number"),
        ('{"cards": {"a": {"last_result": "maybe"}}}', "field 'last_result' must be 'correct', 'missed'"),
        ('{"cards": {"a": {"last_seen_at": 5}}}', "field 'last_seen_at' must be a timestamp"),
        ('{"cards": {"a": {"streak": 2}}}', "unknown field 'streak'"),
    ],
)
def test_wrong_field_types_get_the_corrupt_file_message(tmp_path, text, problem, capsys):
    path = tmp_path / "p.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProgressError) as info:
        ProgressStore(path)
    message = str(info.value)
    assert message.startswith(f"progress file {path} is unreadable (") and problem in message
    assert f"--reset --progress {path}" in message  # what to do, as for corrupt JSON
    assert drill.main(["--list", "--progress", str(path)]) == 1  # the CLI says so, no traceback
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_a_directory_as_progress_file_is_reported(tmp_path):
    with pytest.raises(ProgressError, match="is unreadable"):
        ProgressStore(tmp_path)


# ------------------------------------------------------------------------------------------------
# Two sessions on one progress file (a notebook quiz and a terminal drill open at once)
# ------------------------------------------------------------------------------------------------


def _saved(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def test_two_stores_interleaving_keep_every_answer(tmp_path):
    path = tmp_path / "p.json"
    a, b = ProgressStore(path), ProgressStore(path)  # both opened before either answered
    a.record("only-a", True)
    b.record("only-b", False)
    a.record("shared", True)
    b.record("shared", False)
    a.record("only-a", False)
    saved = _saved(path)
    assert saved["clock"] == 5
    assert {cid: (st["attempts"], st["corrects"], st["misses"]) for cid, st in saved["cards"].items()} == {
        "only-a": (2, 1, 1), "only-b": (1, 0, 1), "shared": (2, 1, 1),
    }  # fmt: skip
    assert saved["cards"]["shared"]["last_result"] == "missed"  # b answered it last
    # Each store holds the merged state after its save: a sees b's answers.
    assert a.stats("only-b").misses == 1 and a.stats("shared").attempts == 2
    # A reset of some cards merges too: it forgets those, not the other store's later answers.
    b.record("only-b", True)
    a.reset(["only-a"])
    assert set(_saved(path)["cards"]) == {"only-b", "shared"} and _saved(path)["cards"]["only-b"]["attempts"] == 2


def test_a_quiz_and_a_terminal_drill_at_once_lose_nothing(tmp_path):
    path = tmp_path / "p.json"
    bank = _write_bank(tmp_path, [{**GOOD, "id": cid} for cid in ("c1", "c2", "c3", "c4")])
    q = quiz("lora", bank=bank, progress=path)
    terminal = DrillSession(load_bank(bank), ProgressStore(path))
    q.reveal()
    q.grade_and_next(True)  # c1 in the notebook
    terminal.next()
    terminal.grade(False)  # c2 in the terminal
    q.reveal()
    q.grade_and_next(False)  # c2 in the notebook too
    terminal.next()
    terminal.grade(True)  # c3 in the terminal
    cards = _saved(path)["cards"]
    assert {cid: st["attempts"] for cid, st in cards.items()} == {"c1": 1, "c2": 2, "c3": 1}


def test_without_fcntl_the_merge_still_keeps_every_answer(tmp_path, monkeypatch):
    from efftrain_lib.drill import progress

    monkeypatch.setattr(progress, "fcntl", None)
    monkeypatch.setattr(progress, "msvcrt", None)
    path = tmp_path / "p.json"
    a, b = ProgressStore(path), ProgressStore(path)
    a.record("x", True)
    b.record("y", True)
    assert set(_saved(path)["cards"]) == {"x", "y"}


_HAMMER = """
import sys
from efftrain_lib.drill import ProgressStore
path, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    store = ProgressStore(path) if i % 5 == 0 else store  # some answers from a stale store, some fresh
    store.record("shared", i % 2 == 0)
    store.record(me, True)
"""


def test_processes_saving_at_once_lose_no_answer(tmp_path):
    # Real concurrency: the lock serialises re-read, merge and replace across processes.
    path, n, workers = tmp_path / "p.json", 40, 3
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _HAMMER, str(path), f"w{k}", str(n)], env=env)
             for k in range(workers)]
    assert [p.wait(timeout=120) for p in procs] == [0] * workers
    cards = _saved(path)["cards"]
    assert cards["shared"]["attempts"] == workers * n
    assert cards["shared"]["corrects"] == cards["shared"]["misses"] == workers * n // 2
    assert all(cards[f"w{k}"]["attempts"] == n for k in range(workers))
    assert _saved(path)["clock"] == 2 * workers * n


# ------------------------------------------------------------------------------------------------
# A progress file that cannot be written is reported before the first question
# ------------------------------------------------------------------------------------------------


def _unwritable(tmp_path) -> Path:
    """A progress path under a regular file: no one can create it, root included."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    return blocker / "p.json"


def test_cli_reports_an_unwritable_progress_file_before_the_first_question(tmp_path, capsys):
    path = _unwritable(tmp_path)
    out = io.StringIO()
    assert drill.main(["--chapter", "lora", "--progress", str(path)], inp=io.StringIO("\ny\n"), out=out) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: progress file {path} cannot be written (") and "--progress FILE" in err
    assert "Q:" not in out.getvalue()  # no question asked, so no answer lost
    assert drill.main(["--reset", "--chapter", "lora", "--progress", str(path)], out=out) == 1
    assert drill.main(["--list", "--chapter", "lora", "--progress", str(path)], out=io.StringIO()) == 0
    with pytest.raises(ProgressError, match="cannot be written"):
        run_drill(_cards("a"), ProgressStore(path), inp=io.StringIO("\ny\n"), out=out)


def test_quiz_shows_an_unwritable_progress_file_and_still_runs(tmp_path):
    path = _unwritable(tmp_path)
    q = quiz("lora", bank=_write_bank(tmp_path, [GOOD]), progress=path)
    assert q.warning.startswith(f"Progress will not be saved: progress file {path} cannot be written")
    assert f"Warning: {q.warning}" in repr(q)  # the text view (nbval, a terminal IPython) says so
    q.widget
    assert "cannot be written" in q.warning_label.value
    q.reveal()
    q.grade_and_next(True)
    assert q.session.results == [("x-card", True)] and not path.exists()


def test_quiz_that_loses_its_file_mid_session_says_so(tmp_path):
    home = tmp_path / "home"
    bank = _write_bank(tmp_path, [GOOD, {**GOOD, "id": "y-card"}])
    q = quiz("lora", bank=bank, progress=home / "p.json")
    assert q.warning == ""
    q.widget
    q.reveal()
    q.grade_and_next(True)
    assert ProgressStore(home / "p.json").stats("x-card").corrects == 1
    for f in home.iterdir():
        f.unlink()
    home.rmdir()
    home.write_text("", encoding="utf-8")  # the directory is gone: the next save cannot happen
    q.reveal()
    q.grade_and_next(False)  # a button callback: must not raise
    assert q.session.results == [("x-card", True), ("y-card", False)]
    assert q.warning.startswith("Progress is no longer saved: progress file") and q.warning_label.value


def test_in_memory_store_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ProgressStore.in_memory()
    store.record("a", True)
    assert store.stats("a").corrects == 1 and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# The terminal loop, driven by a script
# ------------------------------------------------------------------------------------------------


def _run(cards, store, script, **kw):
    out = io.StringIO()
    session = run_drill(cards, store, inp=io.StringIO(script), out=out, **kw)
    return session, out.getvalue()


def test_loop_numeric_reveal_selfgrade_and_progress(tmp_path):
    cards = _cards("t1", "t2", numeric=True)  # n1 (numeric), t1, t2
    store = ProgressStore(tmp_path / "p.json")
    script = "lots\n4.19e6\n" + "\ny\n" + "my answer\nmaybe\nn\n"
    session, out = _run(cards, store, script)
    assert session.results == [("n1", True), ("t1", True), ("t2", False)]
    assert "Could not read 'lots'" in out and "Correct" in out
    assert "Please answer y or n" in out
    assert GOOD["answer"] in out  # revealed
    assert "Session over: 2 of 3 correct. Missed (they come back first next time): t2." in out
    saved = json.loads((tmp_path / "p.json").read_text())["cards"]
    assert saved["t2"]["last_result"] == "missed" and saved["n1"]["corrects"] == 1
    # Next session starts with the missed card.
    session2, out2 = _run(cards, ProgressStore(tmp_path / "p.json"), "")
    assert session2.queue[0].id == "t2" and "missed last time" in out2


def test_loop_wrong_number_and_empty_answer_count_as_missed(tmp_path):
    cards = _cards(numeric=True)
    store = ProgressStore(tmp_path / "p.json")
    session, out = _run(cards[:1], store, "5M\n")
    assert session.results == [("n1", False)] and "Not quite: you said 5,000,000 params" in out
    session, out = _run(cards[:1], ProgressStore(tmp_path / "p.json"), "\n")
    assert session.results == [("n1", False)] and "counted as missed" in out
    assert "Expected: 4,194,304 params" in out
    assert ProgressStore(tmp_path / "p.json").stats("n1").misses == 2


def test_loop_quits_on_q(tmp_path):
    cards = _cards("t1", "t2")
    store = ProgressStore(tmp_path / "p.json")
    session, out = _run(cards, store, "\ny\nq\n")
    assert session.results == [("t1", True)] and "Stopping." in out
    assert store.stats("t2") is None


@pytest.mark.parametrize(
    "script, recorded",
    [
        ("", []),
        ("\n", [("n1", False)]),  # Enter on a numeric card reveals it: a miss
        ("4194304\n\n", [("n1", True)]),  # t1 revealed, then input ends before the self-grade
    ],
)
def test_loop_exits_cleanly_on_eof(tmp_path, script, recorded):
    cards = _cards("t1", "t2", numeric=True)
    store = ProgressStore(tmp_path / "p.json")
    session, out = _run(cards, store, script)
    assert "End of input: stopping." in out
    assert session.results == recorded  # only fully answered cards are recorded
    assert store.stats("t1") is None


def test_loop_accepts_an_input_function_and_a_limit(tmp_path):
    lines = iter(["", "y", "", "n", "", "y"])

    def read():
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    session, out = _run(_cards("a", "b", "c"), ProgressStore(tmp_path / "p.json"), "", limit=2)
    assert len(session.queue) == 2
    out2 = io.StringIO()
    session = run_drill(_cards("a", "b", "c"), ProgressStore(tmp_path / "q.json"), inp=read, out=out2)
    assert session.results == [("a", True), ("b", False), ("c", True)]


def test_session_grades_once(tmp_path):
    session = DrillSession(_cards("a"), ProgressStore.in_memory())
    session.grade(True)
    with pytest.raises(RuntimeError, match="already graded"):
        session.grade(False)
    assert session.next() is None and session.done
    with pytest.raises(ValueError, match="limit"):
        DrillSession(_cards("a"), ProgressStore.in_memory(), limit=0)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def _cli(*args, stdin=subprocess.DEVNULL, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "efftrain_lib.drill", *args],
        cwd=ROOT, env=env, stdin=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cli_list(tmp_path):
    result = _cli("--list", "--chapter", "lora", "--progress", str(tmp_path / "p.json"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{sum(c.chapter == 'lora' for c in BANK)} cards")
    assert "lora-init-b-zero-a-kaiming" in result.stdout and "ckpt-" not in result.stdout
    assert not (tmp_path / "p.json").exists()  # listing writes nothing


def test_cli_drill_without_stdin_exits_cleanly(tmp_path):
    result = _cli("--chapter", "precision", "--limit", "2", env_extra={drill.PROGRESS_ENV: str(tmp_path / "p.json")})
    assert result.returncode == 0, result.stderr
    assert "End of input: stopping." in result.stdout and "No cards answered." in result.stdout


def test_main_in_process_drill_list_reset(tmp_path):
    progress = str(tmp_path / "p.json")
    out = io.StringIO()
    first = order_cards([c for c in BANK if c.chapter == "accumulation"], ProgressStore.in_memory())[0]
    assert drill.main(["--chapter", "accumulation", "--limit", "1", "--progress", progress],
                      inp=io.StringIO("\nn\n"), out=out) == 0  # fmt: skip
    assert ProgressStore(progress).stats(first.id).misses == 1
    out = io.StringIO()
    drill.main(["--list", "--chapter", "accumulation", "--progress", progress], out=out)
    assert out.getvalue().splitlines()[1].split()[:3] == ["missed", str(first.difficulty), first.id]
    out = io.StringIO()
    assert drill.main(["--reset", "--chapter", "accumulation", "--progress", progress], out=out) == 0
    assert "Reset progress of 1 card(s)" in out.getvalue() and ProgressStore(progress).stats(first.id) is None
    out = io.StringIO()
    assert drill.main(["--reset", "--progress", progress], out=out) == 0
    assert not Path(progress).exists()


def test_main_reports_bad_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        drill.main(["--chapter", "quantization"])
    assert info.value.code == 2
    bad = tmp_path / "bank.toml"
    bad.write_text('[[card]]\nid = "x"\n', encoding="utf-8")
    assert drill.main(["--list", "--bank", str(bad), "--progress", str(tmp_path / "p.json")]) == 1
    assert "field 'chapter': missing required field" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Notebook quiz: logic without a browser
# ------------------------------------------------------------------------------------------------


def test_quiz_text_fallback_is_the_first_card(tmp_path):
    q = quiz("lora", progress=tmp_path / "p.json")
    text = repr(q)
    first = q.session.current
    assert text.startswith("Interview drill: lora, ")
    assert first.question in text and first.id in text
    assert text == repr(quiz("lora", progress=tmp_path / "p.json"))  # deterministic
    assert "python -m efftrain_lib.drill --chapter lora" in text


def test_quiz_widget_buttons_advance_and_record(tmp_path):
    bank = _write_bank(tmp_path, [{**GOOD, "id": "n1", "numeric_answer": 64, "unit": "samples"}, GOOD, {**GOOD, "id": "z"}])
    q = quiz("lora", bank=bank, progress=tmp_path / "p.json")
    box = q.widget
    import ipywidgets

    assert isinstance(box, ipywidgets.VBox)
    # Numeric card: the text box and Check are shown; a readable answer grades it.
    assert q.numeric_row.layout.display is None
    q.answer_box.value = "oops"
    assert "Could not read" in q.feedback.value and not q.session.graded
    q.answer_box.value = "64"
    assert "Correct" in q.feedback.value and q.session.graded
    assert q.got_button.disabled and q.missed_button.disabled  # graded once
    q.next_button.click()
    # Text card: reveal, then self-grade.
    assert q.session.current.id == "x-card" and q.numeric_row.layout.display == "none"
    assert q.got_button.disabled and q.answer_html.value == ""
    q.reveal_button.click()
    assert "A." in q.answer_html.value and not q.got_button.disabled
    q.missed_button.click()
    assert q.session.results == [("n1", True), ("x-card", False)]
    assert q.score_label.value.startswith("Score: 1/2")
    q.next_button.click()
    q.next_button.click()  # z skipped without grading: not recorded
    assert q.session.done and q.next_button.disabled and "All cards done" in q.question_label.value
    store = ProgressStore(tmp_path / "p.json")
    assert store.stats("x-card").last_result == "missed" and store.stats("z") is None
    # The same store orders the terminal drill: the missed card first.
    assert order_cards(load_bank(bank), store)[0].id == "x-card"


def test_quiz_check_button_reads_the_text_box(tmp_path):
    bank = _write_bank(tmp_path, [{**GOOD, "id": "n1", "numeric_answer": 112, "unit": "GB"}])
    q = quiz("lora", bank=bank, progress=ProgressStore.in_memory())
    q.widget
    q.answer_box.value = ""
    q.check_button.click()
    assert not q.session.graded
    q.missed_it()  # not revealed yet: self-grading waits for the reveal in the widget, not in the API
    assert q.session.graded


def test_quiz_display_paths(tmp_path, monkeypatch, capsys):
    q = quiz("memory", progress=ProgressStore.in_memory(), limit=2)
    q._ipython_display_()  # no IPython shell: prints the text
    assert capsys.readouterr().out.strip() == repr(q)

    from IPython.core.interactiveshell import InteractiveShell
    import IPython.display

    shown = []
    monkeypatch.setattr(InteractiveShell, "initialized", classmethod(lambda cls: True))
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append((obj, raw)))
    q._ipython_display_()
    bundle, raw = shown[0]
    assert raw and bundle["text/plain"] == repr(q)
    assert "application/vnd.jupyter.widget-view+json" in bundle

    class Printer:
        def text(self, s):
            shown.append(s)

    q._repr_pretty_(Printer(), False)
    assert shown[-1] == repr(q)

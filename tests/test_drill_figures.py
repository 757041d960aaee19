"""The drill's numbers: computed by the library, read from a notebook's run, or cited; never typed in.

Every numeric card's answer is recomputed (a stale cache fails), every classic wrong method written down
beside it is rejected by the card's tolerance (and named when a learner gives it), the figures that text
answers quote from the estimator are recomputed, and the figures they quote from a notebook are compared
with what that notebook printed when it last ran."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from efftrain_lib.drill import BankError, check_numeric, explain_numeric, format_number, load_bank, validate_cards
from efftrain_lib.drill.bank import default_bank_path, read_figures
from efftrain_lib.drill.figures import CITED, COMPUTED, FIGURES, MEASURED, compute_all, figures_path, main, section_outputs, stale
from efftrain_lib.memory import GB, estimate_training_memory
from efftrain_lib.memory_advisor import devices_needed
from efftrain_lib.meter import MIB
from efftrain_lib.plan_runs import tiny_config
from efftrain_lib.planner import Plan, SearchSpace, choose_plan, peak_bytes, step_time

ROOT = Path(__file__).resolve().parents[1]
BANK = load_bank()
BY_ID = {c.id: c for c in BANK}
NUMERIC = [c for c in BANK if c.is_numeric]
WRONG = [(c, why, value) for c in NUMERIC for why, value in c.wrong_answers]


@pytest.fixture(scope="module")
def fresh():
    return compute_all()


def test_the_cache_is_what_the_library_computes_now(fresh):
    cached = read_figures(figures_path())
    assert stale(cached, fresh) == [], "run python -m efftrain_lib.drill.figures --write"


def test_the_figures_command_checks_and_writes(tmp_path, monkeypatch, capsys):
    assert main([]) == 0
    assert "0 stale" in capsys.readouterr().out
    target = tmp_path / "drill_figures.json"
    monkeypatch.setattr("efftrain_lib.drill.figures.figures_path", lambda: target)
    assert main(["--write"]) == 0
    assert stale(read_figures(target), read_figures(figures_path())) == []
    data = json.loads(target.read_text())
    data["figures"]["lora-rslora"]["value"] = 3.0
    target.write_text(json.dumps(data))
    assert main([]) == 1
    assert "lora-rslora: cached 3.0, the library now gives 2.0" in capsys.readouterr().out


def test_no_number_is_typed_into_the_course_bank():
    raw = tomllib.loads(default_bank_path().read_text(encoding="utf-8"))["card"]
    typed = [card["id"] for card in raw if "numeric_answer" in card]
    assert typed == [], f"these cards type their number; register a figure in efftrain_lib/drill/figures.py: {typed}"
    assert set(FIGURES) == {c.id for c in NUMERIC}


def test_every_figure_says_where_it_comes_from():
    for card in NUMERIC:
        kind, _, how = card.how.partition(": ")
        assert kind in (COMPUTED, MEASURED, CITED) and len(how) > 20, card.id
        if kind == CITED:
            assert re.search(r"(19|20)\d\d|arXiv|specification|torch \d+\.\w", how), f"{card.id}: a citation names its source"
        if kind == MEASURED:
            assert ".ipynb §" in how, f"{card.id}: a measured figure names the run (notebook and section)"


def test_every_numeric_card_writes_down_its_classic_mistakes():
    assert all(card.wrong_answers for card in NUMERIC)
    byte_units = {"GB", "MB", "MiB", "GiB"}
    for card in NUMERIC:
        if card.unit in byte_units:  # the decimal / binary mix-up is the one interviewers check first
            assert any("typed as" in why for why, _ in card.wrong_answers), card.id


@pytest.mark.parametrize("card, why, value", WRONG, ids=[f"{c.id}: {why}" for c, why, _ in WRONG])
def test_each_classic_mistake_is_rejected_and_named(card, why, value):
    assert not math.isclose(value, card.numeric_answer, rel_tol=1e-9), "a wrong method that gives the answer"
    for text in (repr(value), f"{value!r} {card.unit}" if card.unit else repr(value)):
        result = explain_numeric(card, text)
        assert result.correct is False, f"{card.id} accepts {text} ({why}) at ±{card.rel_tol:.2%}"
        assert f"That is the classic mistake: {why}." in result.message


def test_the_right_number_is_accepted_in_the_usual_forms():
    for card in NUMERIC:
        assert check_numeric(card, repr(card.numeric_answer)), card.id
        assert check_numeric(card, format_number(card.numeric_answer)), card.id
        if card.unit:
            assert check_numeric(card, f"{card.numeric_answer!r} {card.unit}"), card.id
        if card.unit == "GB":
            assert check_numeric(card, f"{card.numeric_answer * GB / 2**30!r} GiB"), card.id  # the unit, named


def _renderings(value: float) -> set[str]:
    shown = {format_number(value), f"{value:,.0f}", f"{value:,.1f}", f"{value:,.2f}", f"{value:.3g}", f"{value:.4g}",
             f"{value:.0f}", f"{value:g}"}
    return shown | {s.rstrip("0").rstrip(".") for s in shown if "." in s}


@pytest.mark.parametrize("card", NUMERIC, ids=lambda c: c.id)
def test_the_answer_text_states_the_computed_number(card):
    # The explanation types the number in prose: if the library's figure moves, the prose must follow.
    assert any(text in card.answer for text in _renderings(card.numeric_answer)), (
        f"{card.id}: the answer text does not state {card.numeric_answer!r} ({sorted(_renderings(card.numeric_answer))})")


# ------------------------------------------------------------------------------------------------
# Text answers that quote the estimator: each quoted figure recomputed
# ------------------------------------------------------------------------------------------------

def _flat(text: str) -> str:
    return " ".join(text.split())  # answers wrap lines anywhere


def _llama7(batch_size=1, **kw):
    return estimate_training_memory("Llama-2-7B", batch_size=batch_size, seq_len=2048, precision="fp32", **kw)


def _gpus_70b(**kw):
    return devices_needed("Llama-2-70B", budget_gb=80, batch_size=1, seq_len=4096, **kw)


QUOTED = {
    "mem-7b-fp32-adam": [
        ("{:.1f} GB held at the end of backward", lambda: _llama7().peak_bytes / GB),
        ("{:.1f} GB in the foreach step", lambda: _llama7().allocator_peak / GB),
        ("{:.1f} GB here with SDPA", lambda: _llama7().all_at_once["activations"] / GB),
    ],
    "mem-peak-not-sum": [
        ("({:.0f} GB of gradients", lambda: _llama7().all_at_once["gradients"] / GB),
        ("> {:.0f} GB of activations", lambda: _llama7().all_at_once["activations"] / GB),
        ("(~{:.0f} GB vs", lambda: _llama7().allocator_peak / GB),
        ("vs ~{:.0f})", lambda: _llama7().peak_bytes / GB),
        ("the end of forward from b = {:d}", lambda: next(b for b in range(1, 9) if _llama7(b).peak_phase == "end of forward")),
    ],
    "ckpt-saves-30-50-percent": [
        ("optimizer step, {:.0f} GB", lambda: _llama7().allocator_peak / GB),
        ("drop {:.0f}%", lambda: 100 * (1 - _llama7(attention="eager", checkpointing=True).peak_bytes
                                        / _llama7(attention="eager").peak_bytes)),
        ("{:.0f} -> ", lambda: _llama7(attention="eager").peak_bytes / GB),
        ("-> {:.0f} GB, but", lambda: _llama7(attention="eager", checkpointing=True).peak_bytes / GB),
        ("b = 4: {:.0f} -> ", lambda: _llama7(4).allocator_peak / GB),
        ("b = 16: {:.0f} -> ", lambda: _llama7(16).allocator_peak / GB),
        ("GB, {:.0f}%;", lambda: 100 * (1 - _llama7(4, checkpointing=True).allocator_peak / _llama7(4).allocator_peak)),
        ("GB, {:.0f}%.", lambda: 100 * (1 - _llama7(16, checkpointing=True).allocator_peak / _llama7(16).allocator_peak)),
    ],
    "mem-optimizer-step-peak": [
        ("peak at {:.1f} GB", lambda: _llama7(optimizer="adamw").peak_bytes / GB),
        ("+{:.0f} GB", lambda: (_llama7(optimizer="adamw").allocator_peak - _llama7(optimizer="adamw").peak_bytes) / GB),
        ("n_(i-1) elements: {:.1f} GB", lambda: _llama7(optimizer="adamw", optimizer_impl="for-loop").allocator_peak / GB),
        ("holds none ({:.1f} GB)", lambda: _llama7(optimizer="adamw", optimizer_impl="fused").allocator_peak / GB),
    ],
    "ckpt-activation-offload": [
        ("estimator: {:.1f} GB of activations", lambda: estimate_training_memory(
            "Llama-2-7B", batch_size=1, seq_len=2048, precision="bf16").all_at_once["activations"] / GB),
    ],
    "dist-70b-gpus-zero3": [
        ("is {:d} ({:.1f} GB each)", lambda: (lambda n, e: (n, e.allocator_peak / GB))(*_gpus_70b(sharding_stage=3))),
        ("{:d} would do ({:.1f} GB each)",
         lambda: (lambda n, e: (n, e.allocator_peak / GB))(*_gpus_70b(sharding_stage=3, optimizer_impl="fused"))),
    ],
    "dist-more-gpus-fit": [
        ("needs {:.0f} GB per GPU", lambda: _gpus_70b(sharding_stage=2)[1].allocator_peak / GB),
        ("ZeRO-3 fits on {:d}", lambda: _gpus_70b(sharding_stage=3)[0]),
    ],
    "capstone-what-to-turn-on": [
        ("~{:.0f} GB predicted at the allocator", lambda: peak_bytes(_plan_7b_24gb(), "Llama-2-7B") / GB),
        ("x{:.2f} the plain step's predicted time", lambda: step_time(_plan_7b_24gb(), "Llama-2-7B")),
    ],
    "capstone-zero3-gpus-for-7b": [
        ("({:.1f} GB predicted per GPU", lambda: peak_bytes(_plan_7b_zero3(), "Llama-2-7B") / GB),
    ],
    "capstone-autocast-does-not-halve": [
        ("goes from {:.1f}", lambda: peak_bytes(Plan(64, 8), tiny_config()) / MIB),
        ("to {:.1f} MiB with bf16 autocast", lambda: peak_bytes(Plan(64, 8, precision="bf16_autocast"), tiny_config()) / MIB),
        ("autocast: x{:.2f}, not", lambda: peak_bytes(Plan(64, 8, precision="bf16_autocast"), tiny_config())
         / peak_bytes(Plan(64, 8), tiny_config())),
    ],
}


def _plan_7b_24gb():
    return choose_plan("Llama-2-7B", 24 * GB, devices=1, effective_batch=16, seq_len=2048)


def _plan_7b_zero3():
    return choose_plan("Llama-2-7B", 24 * GB, devices=8, effective_batch=16, seq_len=2048,
                       space=SearchSpace(finetuning=("full",), sharding_stages=(3,)))


@pytest.mark.parametrize("card_id", QUOTED)
def test_text_answers_quote_the_estimator_as_it_computes_now(card_id):
    for template, compute in QUOTED[card_id]:
        value = compute()
        text = template.format(*value) if isinstance(value, tuple) else template.format(value)
        card = BY_ID[card_id]
        assert text in _flat(card.question + " " + card.answer), f"{card_id}: the estimator now says {text!r}"


def test_a_gpu_count_that_does_not_fit_is_none():
    assert _gpus_70b(sharding_stage=2)[0] is None


# ------------------------------------------------------------------------------------------------
# Text answers that quote a notebook's run: the same figure, within the card's rounding
# ------------------------------------------------------------------------------------------------

# card id -> (section, or None for the card's own) and [(what the card says, what the notebook printed)]
MEASURED_QUOTES = {
    "lora-activation-memory": (None, [("21.99 MiB", "21.99 MiB"), ("15.79 MiB", "15.79 MiB"), ("20.10 MiB", "20.10 MiB")]),
    "mem-mixed-precision-halves": (None, [("0.68x", "Activations 0.68x")]),
    "prec-what-halves": (None, [("0.68x", "| 0.68 |")]),
    "mem-autocast-activations-ratio": (None, [("0.39 MiB here", "0.39 MiB bf16 weight copies"),
                                              ("ratio is 1.00", "model states 1.00x")]),
    "mem-which-technique": ("00_memory_anatomy.ipynb § 11. Myths vs measurement", [("0.68x", "Activations 0.68x")]),
    "ckpt-saves-30-50-percent": (None, [("89% of the", "89% here"), ("71% of a whole", "this model: 71%")]),
    "ckpt-rng-dropout": (None, [("up to 14.77", "max |diff| 14.77")]),
    "ckpt-optimum-transformer": ("02_gradient_checkpointing.ipynb § 5. The sqrt(n) plan", [("a/c = 20.8", "a/c = 20.8")]),
    "dist-ddp-averages-gradients-not-loss": (None, [("12 and 42", "[12, 42]"), ("by 6e-2", "6.0e-02"), ("to 2e-6", "1.7e-06")]),
    "dist-no-sync-speed-not-correctness": (None, [("444,936", "444,936"), ("111,240", "111,240")]),
    "dist-where-fsdp-communicates": (None, [("222,464", "222,464"), ("111,232", "111,232")]),
    "dist-zero2-fp32-bytes": (None, [("21.6 MiB per rank", "| 21.60 | 21.48 |"), ("the estimator 21.5 MiB", "21.48")]),
    "dist-zero3-communication": (None, [("2.03 bytes", "2.03"), ("DDP's 1.00", "1.00")]),
    "dist-lora-ddp-bytes": (None, [("32,768 bytes", "32,768"), ("3,297,792", "3,297,792")]),
    "qlora-nf4-vs-int4-fp4": (None, [("about 0.092", "0.0920"), ("0.108 (int4)", "0.1075"), ("(0.070", "(0.0698"),
                                     ("0.091)", "0.0912")]),
    "qlora-8bit-embeddings": (None, [("drifted by 84", "83.6 (embed_tokens")]),
    "qlora-merge-4bit": (None, [("RMS 3.55e-3", "'requantization': '3.55e-03'"), ("rounding's 3.44e-3", "rounding': '3.44e-03'"),
                                ("up to 0.9", "| 8.98e-01 |"), ("5e-6)", "| 4.89e-06 |")]),
    "qlora-double-quant-saving-65b": ("06_qlora.ipynb § 8. \"65B on 48 GB\", by the course's own estimator",
                                      [("44.6 vs", "44.6 GB"), ("vs 47.7 GB", "47.7 GB")]),
    "qlora-full-finetune-65b": (None, [("gives 783 GB", "783 GB")]),
    "capstone-combination-still-right": (None, [("max |diff| 3.4e-8", "max |diff| 3.4e-08"),
                                                ("up to 4e-2", "largest entry 3.99e-02"),
                                                ("within 0.05%", "the loss: 0.05%")]),
}
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?", re.I)


def _agree(said: str, printed: str) -> bool:
    """Whether the card's number equals the notebook's within the card's rounding (half its last digit)."""
    a, b = (_NUMBER.search(t).group(0).replace(",", "") for t in (said, printed))
    mantissa, _, exponent = a.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    half_unit = 0.5 * 10 ** (int(exponent or 0) - decimals)
    return abs(float(a) - float(b)) <= half_unit * (1 + 1e-9)


@pytest.mark.parametrize("card_id", MEASURED_QUOTES)
def test_measured_figures_say_what_the_notebook_printed(card_id):
    card = BY_ID[card_id]
    section, pairs = MEASURED_QUOTES[card_id]
    assert card.section, f"{card_id} states a measurement: it must link the notebook section that shows it"
    notebook, heading = (section or card.section).split(" § ", 1)
    printed = section_outputs(notebook, heading)
    for said, shown in pairs:
        assert said in _flat(card.answer), f"{card_id}: the answer no longer says {said!r}"
        assert shown in printed, f"{card_id}: {notebook} § {heading} no longer prints {shown!r}"
        assert _agree(said, shown), f"{card_id}: says {said!r}, the notebook printed {shown!r}"


def test_a_card_that_cites_a_measurement_links_the_section_that_shows_it():
    unlinked = [c.id for c in BANK if re.search(r"\bmeasured\b", c.answer, re.I) and not c.section]
    assert unlinked == []


def test_agreement_is_within_the_cards_rounding():
    assert _agree("0.108", "0.1075") and _agree("2e-6", "1.7e-06") and _agree("84", "83.6")
    assert not _agree("0.108", "0.1074") and not _agree("2e-6", "1.4e-06") and not _agree("84", "83.4")


def test_section_outputs_names_what_is_missing():
    with pytest.raises(LookupError, match="no outputs under 'No such heading'"):
        section_outputs("01_lora.ipynb", "No such heading")


# ------------------------------------------------------------------------------------------------
# The cache and the bank
# ------------------------------------------------------------------------------------------------

def test_a_typed_number_beside_a_computed_one_is_refused():
    card = {"id": "x", "chapter": "lora", "difficulty": 1, "question": "Q?", "answer": "A.", "numeric_answer": 3}
    figure = {"value": 2.0, "kind": "computed", "how": "h", "wrong": []}
    with pytest.raises(BankError, match="typed in, but drill_figures.json computes it"):
        validate_cards({"card": [card]}, figures={"x": figure})
    del card["numeric_answer"]
    (got,) = validate_cards({"card": [{**card, "unit": "GB", "tolerance": 0.05}]}, figures={"x": figure})
    assert got.numeric_answer == 2.0 and got.how == "h" and got.rel_tol == 0.05


@pytest.mark.parametrize("text, problem", [
    ("{", "not a figure file"),
    ('{"figures": {"x": {"value": "2", "how": "h", "wrong": []}}}', "figure 'x': expected value"),
    ('{"figures": {"x": {"value": 2, "how": "h", "wrong": [["why"]]}}}', "figure 'x': expected value"),
])
def test_a_broken_figure_file_says_what_to_do(tmp_path, text, problem):
    bank = tmp_path / "questions.toml"
    bank.write_text('[[card]]\nid = "x"\nchapter = "lora"\ndifficulty = 1\nquestion = "Q?"\nanswer = "A."\n')
    (tmp_path / "drill_figures.json").write_text(text)
    with pytest.raises(BankError, match=re.escape(problem)):
        load_bank(bank)
    with pytest.raises(BankError, match="figure file not found"):
        load_bank(bank, figures=tmp_path / "missing.json")


def test_listing_and_drilling_never_import_torch():
    code = ("import io, sys; from efftrain_lib.drill import main, quiz, ProgressStore; "
            "main(['--list'], out=io.StringIO()); quiz('all', progress=ProgressStore.in_memory()); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

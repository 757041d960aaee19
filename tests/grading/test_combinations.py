"""The helpers that test an exercise's options together (efftrain_lib/grading/combinations.py): the message
must name the combination a learner's code drops, and an error that is the same everywhere is no combination."""

from __future__ import annotations

import pytest

from efftrain_lib.grading.combinations import check_together, product, shared_by, where_wrong

OPTIONS = {"optimizer": ["adam", "adamw", "sgd"], "impl": ["foreach", "fused"], "state_bytes": [4, 2]}


def split(combos, wrong):
    return [c for c in combos if wrong(c)], [c for c in combos if not wrong(c)]


def test_product_lists_every_combination_first_option_slowest():
    combos = product(OPTIONS)
    assert len(combos) == 12 and len({tuple(c.items()) for c in combos}) == 12
    assert combos[0] == {"optimizer": "adam", "impl": "foreach", "state_bytes": 4}
    assert combos[1] == {"optimizer": "adam", "impl": "foreach", "state_bytes": 2}


def test_the_values_that_single_out_the_failures_are_named():
    combos = product(OPTIONS)
    failing, passing = split(combos, lambda c: c["optimizer"] == "adamw" and c["impl"] == "fused")
    assert shared_by(failing, passing) == "optimizer='adamw' and impl='fused'"
    assert where_wrong(failing, passing) == ("wrong in 2 of 12 combinations: exactly those with "
                                             "optimizer='adamw' and impl='fused'")
    failing, passing = split(combos, lambda c: c["state_bytes"] == 2)
    assert shared_by(failing, passing) == "state_bytes=2"


def test_failures_no_values_single_out_are_described_by_what_they_share_or_an_example():
    combos = product(OPTIONS)
    # adam and adamw fail with foreach and bf16, sgd passes there (it has no temporaries): no values single them out
    failing, passing = split(combos, lambda c: c["optimizer"] != "sgd" and c["state_bytes"] == 2 and c["impl"] == "foreach")
    assert shared_by(failing, passing) == ""
    assert where_wrong(failing, passing).endswith("each with impl='foreach' and state_bytes=2")
    failing, passing = split(combos, lambda c: (c["optimizer"], c["impl"]) in {("adam", "fused"), ("sgd", "foreach")})
    assert "e.g. optimizer=" in where_wrong(failing, passing)


def test_check_together_names_the_combination_and_picks_the_hint_that_fits_exactly():
    combos = product(OPTIONS)
    hints = [({"impl": "fused"}, "fused is wrong"), ({"optimizer": "adamw", "impl": "fused"}, "adamw fused is wrong")]
    outcome = check_together(combos, lambda c: "off by 4" if (c["optimizer"], c["impl"]) == ("adamw", "fused") else None,
                             "all right", hints=hints)
    assert not outcome.passed and outcome.hint == "adamw fused is wrong"
    assert outcome.detail.startswith("optimizer='adamw', impl='fused', state_bytes=4: off by 4; wrong in 2 of 12")
    assert check_together(combos, lambda c: None, "all right").passed


def test_an_error_raised_everywhere_is_raised_not_blamed_on_a_combination():
    def missing(combo):
        raise AttributeError("module has no attribute 'optimizer_step_temporaries'")

    with pytest.raises(AttributeError):
        check_together(product(OPTIONS), missing, "all right")
    with pytest.raises(NotImplementedError):  # a stub stays a stub
        check_together(product(OPTIONS), lambda c: (_ for _ in ()).throw(NotImplementedError("Exercise 0.4")), "")
    # an error in some combinations only is a failure that names them
    outcome = check_together(product(OPTIONS), lambda c: 1 / (c["state_bytes"] - 2) and None, "all right")
    assert not outcome.passed and "ZeroDivisionError" in outcome.detail and "exactly those with state_bytes=2" in outcome.detail

"""Options tested together: the combinations a grader runs, and a failure message that names the combination.

A grader that tests each option of an exercise alone passes code that handles the option but drops it when
another one is on (clipping with a scaler, a frozen input with dropout, the fused implementation of AdamW).
`product(options)` lists every combination of the options' values (the graders keep their option sets small
enough for the full product: a mistake may need three options together, which pairwise covering would miss).
`shared_by(failing, passing)` says what the failing combinations have in common and
the passing ones lack, e.g. "optimizer='adamw' and impl='fused'": the combination the learner's code drops;
`where_wrong` words it for a report, and `check_together` runs a trial on every combination and turns the
misses into one check's outcome.

    for combo in product({"bias": [True, False], "dropout": [0.0, 0.5], "merged": [False, True]}):
        ...  # {"bias": True, "dropout": 0.0, "merged": False}, ... (8 combinations)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

from efftrain_lib.grading import Outcome, failed, passed

__all__ = ["TOGETHER_HINT", "check_together", "describe", "product", "shared_by", "where_wrong"]


def product(options: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the options' values, the first option varying slowest."""
    names = list(options)
    return [dict(zip(names, values)) for values in itertools.product(*(options[n] for n in names))]


def describe(combo: Mapping) -> str:
    """"bias=False, dropout=0.5": a combination as a learner would pass it."""
    return ", ".join(f"{name}={value!r}" for name, value in combo.items())


def shared_by(failing: Sequence[Mapping], passing: Sequence[Mapping] = ()) -> str:
    """What every failing combination has and no passing one does: one option's value, else two or three
    options' values together ("optimizer='adamw' and impl='fused'"); "" when no three values explain the
    failures. Values are compared by repr, so lists may be values."""
    if not failing:
        return ""
    first = failing[0]

    def matches(combo: Mapping, names: tuple[str, ...]) -> bool:
        return all(name in combo and repr(combo[name]) == repr(first[name]) for name in names)

    for size in (1, 2, 3):
        for names in itertools.combinations(first, size):
            if all(matches(c, names) for c in failing) and not any(matches(c, names) for c in passing):
                return " and ".join(f"{name}={first[name]!r}" for name in names)
    return ""


def where_wrong(failing: Sequence[Mapping], passing: Sequence[Mapping] = ()) -> str:
    """"wrong in 6 of 24 combinations: exactly those with master_weights=True and weight_bytes=4"; when no one,
    two or three values single them out, the values every failing combination shares ("..., each with impl='for-loop'
    and state_bytes=2": some combinations with them pass, e.g. where the option cannot matter), else the first."""
    total = len(failing) + len(passing)
    exact = shared_by(failing, passing)
    if exact:
        return f"wrong in {len(failing)} of {total} combinations: exactly those with {exact}"
    common = [name for name in failing[0] if all(repr(c.get(name)) == repr(failing[0][name]) for c in failing)]
    if common and len(failing) > 1:
        shared = " and ".join(f"{name}={failing[0][name]!r}" for name in common)
        return f"wrong in {len(failing)} of {total} combinations, each with {shared}"
    return f"wrong in {len(failing)} of {total} combinations, e.g. {describe(failing[0])}"


def _meets(combo: Mapping, condition: Mapping) -> bool:
    return all(combo.get(k) in v if isinstance(v, (set, frozenset)) else combo.get(k) == v
               for k, v in condition.items())


TOGETHER_HINT = "each option alone is right, two together are not: see the combination named above"


def check_together(combos: Sequence[dict], trial: Callable[[dict], str | None], what: str, *,
                   hints: Sequence[tuple[Mapping, str]] = (), default_hint: str = TOGETHER_HINT) -> Outcome:
    """Run `trial(combo)` (None when right, else what is wrong) on every combination; an exception the learner's
    code raises is a miss too, reported with its combination. Passes with `what`, or fails naming the first miss,
    what the misses share, and the hint of `hints` whose condition (option -> value, or -> a set of values
    any of which will do) picks out exactly the failing combinations, else `default_hint`."""
    failing, problems, errors = [], [], []
    for combo in combos:
        try:
            problem = trial(combo)
        except NotImplementedError:
            raise  # a stub: the harness reports it as not implemented yet
        except Exception as exc:  # noqa: BLE001 - the learner's code: reported with its combination
            errors.append(exc)
            problem = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or ['(no message)'])[0]}"
        if problem:
            failing.append(combo)
            problems.append(problem)
    if not failing:
        return passed(what)
    if len(errors) == len(combos) and len({(type(e), str(e)) for e in errors}) == 1:
        raise errors[0]  # the same error everywhere (a missing function): no combination to name
    passing = [c for c in combos if c not in failing]
    hint = next((h for condition, h in hints if failing == [c for c in combos if _meets(c, condition)]), default_hint)
    return failed(f"{describe(failing[0])}: {problems[0]}; {where_wrong(failing, passing)}", hint)

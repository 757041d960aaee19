"""Options tested together: the combinations a grader runs, and a failure message that names the combination.

A grader that tests each option of an exercise alone passes code that handles the option but drops it when
another one is on (clipping with a scaler, a frozen input with dropout, the fused implementation of AdamW).
`product(options)` lists every combination of the options' values; `all_pairs(options)` lists fewer, chosen
so that every value of every option meets every value of every other option at least once (a covering
array, built greedily: where the full product is large, most mistakes that drop an option in company still
show up in some pair). `shared_by(failing, passing)` says what the failing combinations have in common and
the passing ones lack, e.g. "optimizer='adamw' and impl='fused'": the combination the learner's code drops;
`where_wrong` words it for a report.

    for combo in all_pairs({"bias": [True, False], "dropout": [0.0, 0.5], "merged": [False, True]}):
        ...  # {"bias": True, "dropout": 0.0, "merged": False}, ...
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

__all__ = ["all_pairs", "describe", "product", "shared_by", "where_wrong"]


def product(options: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the options' values, the first option varying slowest."""
    names = list(options)
    return [dict(zip(names, values)) for values in itertools.product(*(options[n] for n in names))]


def all_pairs(options: Mapping[str, Sequence]) -> list[dict]:
    """Combinations that together hold every pair of values of every two options (deterministic).

    Greedy: each new combination is the one, among the full product, that covers the most pairs not yet
    covered (the first such in product order). Meant for products of a few thousand combinations at most."""
    names = list(options)
    if any(len(options[n]) == 0 for n in names):
        raise ValueError(f"every option needs at least one value: {dict(options)!r}")
    if len(names) < 3:
        return product(options)
    indices = [range(len(options[n])) for n in names]
    pairs = list(itertools.combinations(range(len(names)), 2))
    uncovered = {(i, a, j, b) for i, j in pairs for a in indices[i] for b in indices[j]}
    candidates = list(itertools.product(*indices))
    rows = []
    while uncovered:
        row = max(candidates, key=lambda r: sum((i, r[i], j, r[j]) in uncovered for i, j in pairs))
        uncovered -= {(i, row[i], j, row[j]) for i, j in pairs}
        rows.append(row)
    return [{n: options[n][k] for n, k in zip(names, row)} for row in rows]


def describe(combo: Mapping) -> str:
    """"bias=False, dropout=0.5": a combination as a learner would pass it."""
    return ", ".join(f"{name}={value!r}" for name, value in combo.items())


def shared_by(failing: Sequence[Mapping], passing: Sequence[Mapping] = ()) -> str:
    """What every failing combination has and no passing one does: one option's value, else two options'
    values together ("optimizer='adamw' and impl='fused'"); "" when no one or two values explain the
    failures. Values are compared by repr, so lists may be values."""
    if not failing:
        return ""
    first = failing[0]

    def matches(combo: Mapping, names: tuple[str, ...]) -> bool:
        return all(name in combo and repr(combo[name]) == repr(first[name]) for name in names)

    for size in (1, 2):
        for names in itertools.combinations(first, size):
            if all(matches(c, names) for c in failing) and not any(matches(c, names) for c in passing):
                return " and ".join(f"{name}={first[name]!r}" for name in names)
    return ""


def where_wrong(failing: Sequence[Mapping], passing: Sequence[Mapping] = ()) -> str:
    """"wrong in 6 of 24 combinations: exactly those with master_weights=True and weight_bytes=4"; when no one
    or two values single them out, the values every failing combination shares ("..., each with impl='for-loop'
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

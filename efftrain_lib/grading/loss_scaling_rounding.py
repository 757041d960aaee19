"""The checks of Exercise 3.7, stochastic rounding to bf16 (`stochastic_round_to_bf16(x)` in
<impl>/loss_scaling.py). The loss_scaling grader (efftrain_lib/grading/loss_scaling.py) registers them: it
owns their names, hints and report order; the code is here.

The reference is the definition, computed independently of any bit trick: the two bf16 values around x are
torch's round-to-nearest x.bfloat16() and its neighbour on x's other side (torch.nextafter in bf16); the one
farther from zero must come out with probability (|x| - |nearer-to-zero|) / (gap), in float64. torchao's
implementation (`torchao.optim.quant_utils._fp32_to_bf16_sr`, what its bf16 AdamW uses) passes these checks:
tests/grading/test_loss_scaling_graders.py grades it.

Tolerances: an observed share of "away from zero" within 5 standard deviations, sqrt(p (1 - p) / n), of its
probability p over n = 4096 draws (a false alarm over the 24 values checked: ~1e-5); the mean of M bf16
weights after T updates within 5 standard deviations (each rounding adds at most (step / 2)^2 of variance)
of the exact sum of the updates. Every call is seeded with torch.manual_seed, so a run is reproducible.
"""

from __future__ import annotations

import itertools
import math

import torch

from efftrain_lib.grading import failed, passed

BF16 = torch.bfloat16
DRAWS = 4096


def _bracket(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearer to zero, farther from zero): the two bf16 values around each element of x, in float64.
    Equal to x where x is a bf16 value (or +-0, +-inf)."""
    nearest = x.to(BF16)
    beyond = torch.where(x.double() > nearest.double(), math.inf, -math.inf).to(BF16)  # toward x's side
    other = torch.nextafter(nearest, beyond)
    other = torch.where(nearest.double() == x.double(), nearest, other)  # exact: no second candidate
    a, b = nearest.double(), other.double()
    closer = a.abs() <= b.abs()
    return torch.where(closer, a, b), torch.where(closer, b, a)


def _away_probability(x: torch.Tensor) -> torch.Tensor:
    """The probability of rounding away from zero, (|x| - |toward|) / gap, for finite neighbours."""
    toward, away = _bracket(x)
    gap = (away - toward).abs()
    return torch.where(gap > 0, (x.double() - toward).abs() / gap, torch.zeros_like(gap))


def _call(impl, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return impl.stochastic_round_to_bf16(x)


# ------------------------------------------------------------------- every kind of input --
def _values(kind: str, sign: float, n: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(2 * KINDS.index(kind) + (sign < 0))
    u = torch.rand(n, generator=g, dtype=torch.float64)
    values = {
        "normal values": 10 ** (u * 4 - 2),  # 0.01 .. 100
        "subnormal values": 1e-40 + u * 1e-38,  # below bf16's (and fp32's) smallest normal 1.2e-38
        "values beyond bf16's largest finite": 3.3896e38 + u * 1e34,
        "bf16 values (exact)": (10 ** (u * 4 - 2)).to(BF16).double(),
        "+-0, +-inf and NaN": torch.tensor([0.0, math.inf, math.nan] * (n // 3), dtype=torch.float64),
    }[kind]
    return (values * sign).float()


KINDS = ["normal values", "subnormal values", "values beyond bf16's largest finite", "bf16 values (exact)",
         "+-0, +-inf and NaN"]
LAYOUTS = {  # the same 12 values laid out four ways
    "a contiguous 1-D tensor": lambda v: v,
    "a transposed 3 x 4 view": lambda v: v.reshape(4, 3).t(),
    "every other element of a 24-long tensor": lambda v: torch.stack([v, v]).t().reshape(-1)[::2],
    "a 0-dim tensor (one value)": lambda v: v[5].clone(),
}


def rounds_to_a_bracketing_bf16_value(impl):
    """Every kind of value x every sign x every layout (the whole product: 40 small calls)."""
    for (kind, sign, layout) in itertools.product(KINDS, (1.0, -1.0), LAYOUTS):
        x = LAYOUTS[layout](_values(kind, sign))
        before = x.clone()
        where = f"{kind}, {'negative' if sign < 0 else 'positive'}, {layout}"
        out = _call(impl, x)
        if not torch.equal(torch.nan_to_num(x), torch.nan_to_num(before)):
            return failed(f"{where}: x itself was changed", "x was modified in place: work on a copy (or on new "
                          "tensors: x.view(torch.int32) shares x's memory, so `bits &= ...` rewrites x)")
        if not isinstance(out, torch.Tensor) or out.dtype != BF16 or out.shape != x.shape:
            got = f"{out.dtype}, shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            return failed(f"{where}: returned {got}; expected bf16 of shape {tuple(x.shape)}",
                          "return a bf16 tensor of x's shape, for any shape and strides (a 0-dim one too)")
        problem = _bracket_problem(x, out)
        if problem:
            return failed(f"{where}: {problem[0]}", problem[1])
    return passed(f"{len(KINDS)} kinds of value x 2 signs x {len(LAYOUTS)} layouts: every result is one of the two "
                  "bf16 values around x; exact values, +-0, +-inf and NaN unchanged; x untouched")


def _bracket_problem(x: torch.Tensor, out: torch.Tensor) -> tuple[str, str] | None:
    x, out = x.reshape(-1), out.reshape(-1)
    nan = torch.isnan(x)
    if not torch.equal(torch.isnan(out), nan):
        bad = (torch.isnan(out) != nan).nonzero()[0].item()
        return (f"{x[bad].item()} became {out[bad].item()}",
                "NaN must stay NaN and nothing else may become NaN: +-inf and exact values have no second "
                "candidate (a distance ratio (x - lo) / (hi - lo) is inf/inf or 0/0 there)" if nan[bad] == 0 else
                "NaN must stay NaN (cutting off the low 16 bits of a NaN whose payload sits there gives inf)")
    toward, away = _bracket(x)
    got = out.double()
    ok = nan | (got == toward) | (got == away)
    if bool(ok.all()):
        return None
    bad = (~ok).nonzero()[0].item()
    exact = toward[bad] == away[bad]
    hint = ("an exact bf16 value (or +-0, +-inf) must come back unchanged: there is nothing to round" if exact else
            "the result must be one of the two bf16 values around x: x truncated toward zero, or one bf16 step "
            "farther from zero (for subnormals too: the bf16 step there is 2^-133)")
    return (f"{x[bad].item():.9g} became {got[bad].item():.9g}; the bf16 values around it are "
            f"{toward[bad].item():.9g} and {away[bad].item():.9g}", hint)


# ------------------------------------------------------------------------------- unbiased --
def _probe_values() -> torch.Tensor:
    """Values with known probabilities of rounding away from zero, in four binades, both signs and
    the subnormals: toward + p * gap for p in 1/256 .. 15/16."""
    bases = torch.tensor([1.0, -3.0, 0.01171875, -200.0, 2.0**-130, -(2.0**-128)], dtype=torch.float64)
    gaps = bases.abs().to(BF16).double()
    gaps = (torch.nextafter(gaps.to(BF16), torch.full_like(gaps, math.inf).to(BF16)).double() - gaps)
    shares = torch.tensor([1 / 256, 1 / 4, 1 / 2, 15 / 16], dtype=torch.float64)
    return (bases[:, None] + torch.sign(bases)[:, None] * gaps[:, None] * shares[None, :]).reshape(-1).float()


def rounding_is_unbiased(impl):
    x = _probe_values()
    p = _away_probability(x)
    out = _call(impl, x.repeat(DRAWS), seed=1).reshape(DRAWS, -1).double()
    toward, away = _bracket(x)
    share = (out == away).double().mean(0)
    bound = 5 * torch.sqrt(p * (1 - p) / DRAWS)
    if bool(((share - p).abs() <= bound).all()):
        bias = ((out.mean(0) - x.double()) / (away - toward).abs()).abs().max().item()
        return passed(f"{x.numel()} values x {DRAWS} draws: each value's share of 'away from zero' within 5 sigma "
                      f"of (distance) / (gap); mean within {bias:.3f} of a bf16 step of x")
    worst = ((share - p).abs() / bound.clamp_min(1e-12)).argmax().item()
    detail = (f"x = {x[worst].item():.9g} went away from zero in {share[worst].item():.4f} of {DRAWS} draws; "
              f"its probability is {p[worst].item():.4f} (5 sigma: {bound[worst].item():.4f})")
    return failed(detail, _bias_hint(x, share, p, away))


def _bias_hint(x, share, p, away) -> str:
    wrong = (share - p).abs() > 5 * torch.sqrt(p * (1 - p) / DRAWS)
    if bool((x[wrong].abs() < 2.0**-126).all()):
        return ("subnormals: below 2^-126 the bf16 step stops shrinking with the exponent and stays 2^-133; the "
                "two candidates there are multiples of 2^-133")
    if torch.equal(share, (x.to(BF16).double() == away).double()):
        return "round to nearest: no randomness, so an update under half a bf16 step is lost every time"
    if bool(((share == 0) | (share == 1)).all()):
        return ("every copy of a value rounded the same way: one random draw shared by the whole tensor; draw one "
                "per element (torch.randint(..., x.shape) or torch.rand_like)")
    if bool(((share - (1 - p)).abs() <= 0.05).all()):
        return "probability reversed: the farther neighbour came out with the nearer one's probability"
    if bool(((share - 0.5).abs() <= 0.05).all()):
        return "a fair coin: the chance of rounding away must be the distance ratio, not 1/2"
    return "round away from zero with probability (|x| - |x truncated|) / (the bf16 step there), per element"


# -------------------------------------------------------------------------- reproducible --
def reproducible_under_manual_seed(impl):
    x = torch.full((1024,), 1.0 + 2.0**-9)  # halfway between two bf16 values: p = 1/2 each
    first, again, other = (_call(impl, x.clone(), seed=seed) for seed in (3, 3, 4))
    if not torch.equal(first, again):
        return failed("two calls after torch.manual_seed(3) gave different results",
                      "draw from torch's default generator (torch.randint / torch.rand without a generator of your "
                      "own): then torch.manual_seed reproduces a run")
    if torch.equal(first, other):
        return failed("torch.manual_seed(3) and torch.manual_seed(4) gave the same result",
                      "no randomness between calls: a generator seeded inside the function (or round to nearest) "
                      "makes every call round the same way")
    return passed("torch.manual_seed(3) twice: equal; seeds 3 and 4: different")


def non_float32_input_is_a_type_error(impl):
    for what, bad in (("float64", torch.ones(3, dtype=torch.float64)), ("float16", torch.ones(3, dtype=torch.float16)),
                      ("bfloat16", torch.ones(3, dtype=BF16)), ("int32", torch.ones(3, dtype=torch.int32)),
                      ("a Python list", [1.0, 2.0])):
        try:
            impl.stochastic_round_to_bf16(bad)
        except TypeError:
            continue
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's exception is the finding
            return failed(f"{what}: {type(error).__name__}: {str(error)[:80]}",
                          "raise TypeError for anything but a float32 tensor, saying what was given")
        return failed(f"{what} was accepted",
                      "check x.dtype == torch.float32 and raise TypeError otherwise: a float64 value rounds twice "
                      "(to fp32, then to bf16), which is biased, and an integer tensor is no value to round")
    return passed("TypeError for float64, float16, bfloat16, int32 and a list")


# ----------------------------------------------------------------- the claim: small updates --
def bf16_weights_keep_small_updates(impl):
    """M copies of bf16 weights (both signs, four magnitudes, a subnormal), T updates of a tenth of a bf16
    step each (toward and away from zero): their mean must land on the exact sum of the updates."""
    copies, steps = 1024, 100
    w0 = torch.tensor([1.0, -1.0, 0.01171875, -300.0, 2.0**-130], dtype=BF16)
    step_size = (torch.nextafter(w0.abs(), torch.full_like(w0, math.inf)) - w0.abs()).double()
    update = step_size * 0.1 * torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    weights = w0.repeat(copies, 1)
    torch.manual_seed(5)
    for _ in range(steps):
        weights = impl.stochastic_round_to_bf16(weights.float() + update.float())
    target = w0.double() + steps * update.float().double()
    mean = weights.double().mean(0)
    tolerance = 5 * math.sqrt(steps) * (step_size * 2) / 2 / math.sqrt(copies)  # steps at most double here
    error = (mean - target).abs()
    kept = ((mean - w0.double()) / (target - w0.double()))
    if bool((error <= tolerance).all()):
        return passed(f"{steps} updates of 0.1 bf16 step on {copies} copies of {w0.numel()} weights: mean realized "
                      f"{kept.min().item():.3f}-{kept.max().item():.3f} of the exact drift (round to nearest: 0)")
    worst = (error / tolerance).argmax().item()
    detail = (f"weight {w0[worst].item():.4g}: after {steps} updates of {update[worst].item():.3g} the bf16 copies "
              f"average {mean[worst].item():.6g}; the exact sum gives {target[worst].item():.6g} (realized "
              f"{kept[worst].item():.3f} of the drift; 5 sigma: {tolerance[worst].item():.2g})")
    hint = ("the updates were lost: round to nearest swallows any update under half a bf16 step; round up with "
            "probability (distance) / (step) instead" if abs(kept[worst].item()) < 0.05 else
            "biased rounding: the expected result must be x itself, so the drift adds up exactly on average")
    if w0[worst].abs() < 2.0**-126:
        hint += " (this weight is subnormal: the bf16 step there is 2^-133, whatever its exponent says)"
    return failed(detail, hint)

"""The checkpointing chapter's measurements and slider: plain functions, and a thin widget shell.

What a plan costs, measured and predicted:

* measured (`measure_plan`): one training step of a model under a checkpointing plan, with the course's
  meter (exact CPU accounting): the activation bytes kept after forward, the activation peak of the whole
  step (our checkpoint recomputes under the meter's hooks, so the recomputed segment is seen), and the
  median step time over a few steps of `training.train`.
* predicted (`ActivationModel`): Chen et al.'s accounting. With the n layers cut into segments of k
  layers, the forward keeps one checkpoint (size c) per segment plus what lies outside the layers (base);
  backward recomputes one segment at a time and holds its k layers' activations (a each) at once:
      kept  = base + (n / k) c
      peak  = (n / k - 1) c + k a     (the head's activations are gone by then; the segment's own
                                       checkpoint is its first layer's input, part of a)
  minimised at n / k = sqrt(n a / c) segments. Chen's O(sqrt(n)) is the case a = c; a transformer block
  keeps ~20x its input (a >> c), which moves the optimum to one layer per segment.
  Time: one extra forward of the checkpointed layers, whatever k (when every segment is checkpointed).

The widget (`plan_explorer`) only calls these; nbval never renders it, pytest tests the functions.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from .checkpointing import checkpoint, checkpoint_sequential, disable_checkpointing, enable_checkpointing
from .devices import model_device
from .meter import MIB, SavedTensorCounter, measure_step
from .losses import language_model_loss
from .models import TinyConfig, TinyTransformer
from .timing import FIRST, Timings, interleaved
from .training import train, training_step
from .widgets import WIDE, interactive_figure


# ---------------------------------------------------------------------------------- models --
def thin_chain(n_layers: int, width: int = 256, seed: int = 0) -> nn.Sequential:
    """n blocks of Linear + Tanh: each block keeps one tensor the size of its input (Chen's a = c)."""
    if n_layers < 1 or width < 1:
        raise ValueError(f"n_layers and width must be >= 1, got {n_layers} and {width}")
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(n_layers)])


def deep_config(n_layers: int = 16, hidden_size: int = 64, seq: int = 64) -> TinyConfig:
    """The tiny transformer with n layers (the sqrt(n) experiments use 16), its MLP scaled with the hidden
    size as in the default TinyConfig (ffn 172 at hidden size 64, LLaMA's ~8/3 ratio)."""
    return TinyConfig(n_layers=n_layers, hidden_size=hidden_size, n_heads=4, ffn_dim=round(hidden_size * 172 / 64),
                      max_seq_len=seq)


def token_batch(config: TinyConfig, batch_size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token windows of the config's full length (memory depends on shapes, not on the text)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch_size, config.max_seq_len + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:]


# ----------------------------------------------------------------------------- measurement --
@dataclass(frozen=True)
class PlanMeasurement:
    """One plan, measured. every=None: no checkpointing. Bytes from the CPU meter; seconds: median step."""

    n_layers: int
    every: int | None
    kept_bytes: int
    peak_bytes: int
    step_seconds: float
    vs_plain: float = float("nan")  # median per-round step-time ratio to no checkpointing, when timed so

    @property
    def segments(self) -> int:
        return 0 if self.every is None else math.ceil(self.n_layers / self.every)

    @property
    def label(self) -> str:
        return "no checkpointing" if self.every is None else f"every {self.every} ({self.segments} segments)"


def activation_peak(record) -> int:
    """Largest activation bytes alive at any event of a meter StepRecord."""
    return max(event.breakdown.activations for event in record.timeline())


def _apply_plan(model: TinyTransformer, every: int | None, impl: str) -> None:
    if every is None:
        disable_checkpointing(model)
    else:
        enable_checkpointing(model, every, impl=impl)


def measure_plan(model: TinyTransformer, batch, every: int | None, *, steps: int = 4, impl: str = "ours",
                 progress: bool = False, desc: str | None = None) -> PlanMeasurement:
    """Memory of one step (meter) and the median time of `steps` training steps, for `every` (None: plain).

    Plain SGD at lr 0 (no state, weights unchanged) so that the step is forward + backward; the model is
    left without checkpointing. To compare plans on a shared machine, prefer `time_plans`, which
    interleaves them.
    """
    _apply_plan(model, every, impl)
    try:
        record = measure_step(model, None, batch, attribute_modules=False)
        seconds = float("nan")
        if steps > 0:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
            log = train(model, lambda step: batch, steps=steps + 1, optimizer=optimizer, progress=progress,
                        desc=desc or ("plain" if every is None else f"every {every}"))
            seconds = log.median_step_seconds
    finally:
        disable_checkpointing(model)
    return PlanMeasurement(len(model.layers), every, record.sample("forward").activations,
                           activation_peak(record), seconds)


def interleaved_step_seconds(runs: dict, batch, *, reference=FIRST, rounds: int = 11,
                             progress: bool = True) -> Timings:
    """Step times of each run, measured in interleaved rounds (efftrain_lib.timing).

    runs: {label: (model, setup)}; setup() (or None) is called, untimed, before each of the run's turns
    (e.g. to apply a checkpointing plan). A turn is one `training_step` with SGD at lr 0 (forward +
    backward + a step that changes nothing). reference: the label ratios are taken against (default:
    the first run).
    """
    if rounds < 1 or not runs:
        raise ValueError(f"interleaved_step_seconds needs rounds >= 1 and at least one run, got {rounds} and {runs}")

    def one_step(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        return lambda: training_step(model, optimizer, [batch])

    steps = {label: one_step(model) for label, (model, _) in runs.items()}
    setups = {label: setup for label, (_, setup) in runs.items() if setup is not None}
    device = model_device(next(iter(runs.values()))[0])
    return interleaved(steps, rounds=rounds, reference=reference, setups=setups, device=device, progress=progress)


def time_plans(model: TinyTransformer, batch, plans: list[int | None], *, rounds: int = 11, impl: str = "ours",
               progress: bool = True) -> Timings:
    """Step times of each checkpointing plan of `model` (every=None: plain), interleaved; ratios are
    against the plain model when None is among the plans, else against the first plan."""
    runs = {every: (model, functools.partial(_apply_plan, model, every, impl)) for every in plans}
    try:
        reference = None if None in plans else plans[0]
        return interleaved_step_seconds(runs, batch, reference=reference, rounds=rounds, progress=progress)
    finally:
        disable_checkpointing(model)


def with_timing(measurement: PlanMeasurement, timings: Timings) -> PlanMeasurement:
    """The measurement with its step time and its ratio to the reference run from `timings`."""
    every = measurement.every
    return PlanMeasurement(measurement.n_layers, every, measurement.kept_bytes, measurement.peak_bytes,
                           timings.seconds[every], timings.ratios[every])


def chain_plan_bytes(chain: nn.Sequential, x: torch.Tensor, every: int | None, *,
                     sequential: bool = False) -> tuple[int, int]:
    """(kept after forward, peak) activation bytes of the thin chain under a plan.

    every=None: plain. sequential=True: efftrain_lib.checkpointing.checkpoint_sequential with
    len(chain) // every segments (its last segment is not checkpointed); else every segment is.
    """
    n = len(chain)
    blocks = list(chain)

    def run():
        if every is None:
            return chain(x)
        if sequential:
            return checkpoint_sequential(chain, max(1, n // every), x)
        h = x
        for start in range(0, n, every):
            h = checkpoint(nn.Sequential(*blocks[start:start + every]), h)
        return h

    with SavedTensorCounter(chain) as counter:
        out = run()
        kept = counter.activation_bytes
        out.sum().backward()
    chain.zero_grad(set_to_none=True)
    return kept, counter.peak_bytes


# ------------------------------------------------------------------------------- prediction --
@dataclass(frozen=True)
class ActivationModel:
    """Chen et al.'s accounting, with sizes read off measurements (bytes).

    base: kept outside the layers (embeddings, final norm, head, loss); c: one checkpoint (a layer's
    input); a: one layer's activations when nothing is checkpointed.
    """

    n_layers: int
    base: float
    c: float
    a: float

    def kept(self, every: int | None) -> float:
        if every is None:
            return self.base + self.n_layers * self.a
        return self.base + math.ceil(self.n_layers / every) * self.c

    def peak(self, every: int | None) -> float:
        """Backward recomputes the last segment when the head's activations are already released, and
        that segment's checkpoint is its first layer's input (counted in a): (segments - 1) c + k a."""
        if every is None:
            return self.kept(None)
        segments = math.ceil(self.n_layers / every)
        return max(self.kept(every), (segments - 1) * self.c + min(every, self.n_layers) * self.a)

    @property
    def best_segments(self) -> float:
        """n / k minimising peak: sqrt(n a / c) (Chen: a = c gives sqrt(n))."""
        return math.sqrt(self.n_layers * self.a / self.c)

    def with_layers(self, n_layers: int) -> "ActivationModel":
        return ActivationModel(n_layers, self.base, self.c, self.a)

    @classmethod
    def fit(cls, measurements: list[PlanMeasurement]) -> "ActivationModel":
        """From the plain run and the runs at every=1 and every=n (kept bytes are exact, so three suffice)."""
        by_every = {m.every: m for m in measurements}
        n = measurements[0].n_layers
        missing = [e for e in (None, 1, n) if e not in by_every]
        if missing:
            raise ValueError(f"ActivationModel.fit needs the plain run and every=1 and every={n}; missing {missing}")
        c = (by_every[1].kept_bytes - by_every[n].kept_bytes) / (n - 1) if n > 1 else float(by_every[1].kept_bytes)
        base = by_every[n].kept_bytes - c
        a = (by_every[None].kept_bytes - base) / n
        return cls(n, base, c, a)


def predicted_step_seconds(plain_seconds: float, forward_fraction: float, recomputed_fraction: float) -> float:
    """Step time with `recomputed_fraction` of the forward run twice (1.0: every segment checkpointed)."""
    if not 0 <= forward_fraction <= 1 or not 0 <= recomputed_fraction <= 1:
        raise ValueError("forward_fraction and recomputed_fraction must be in [0, 1]")
    return plain_seconds * (1 + forward_fraction * recomputed_fraction)


def forward_fraction(model: nn.Module, batch, repeats: int = 5) -> float:
    """Median share of a training step's time spent in forward (no checkpointing)."""
    inputs, targets = batch
    shares = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = language_model_loss(model(inputs), targets)
        middle = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        shares.append((middle - start) / (end - start))
    model.zero_grad(set_to_none=True)
    return statistics.median(shares[1:])


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


# --------------------------------------------------------------------------------- drawing --
def draw_plan_sweep(ax_memory, ax_time, measurements: list[PlanMeasurement], model: ActivationModel | None = None,
                    title: str = "") -> None:
    """Memory (kept after forward, step peak) and step time against the number of segments."""
    plans = sorted((m for m in measurements if m.every is not None), key=lambda m: m.segments)
    plain = next((m for m in measurements if m.every is None), None)
    segs = [m.segments for m in plans]
    ax_memory.plot(segs, [m.peak_bytes / MIB for m in plans], "o-", label="measured: step peak")
    ax_memory.plot(segs, [m.kept_bytes / MIB for m in plans], "s-", label="measured: kept after forward")
    if model is not None:
        grid = sorted(set(segs) | {1, model.n_layers})
        everies = [model.n_layers // s for s in grid]
        ax_memory.plot(grid, [model.peak(e) / MIB for e in everies], "x:", color="black", ms=7,
                       label="predicted peak")
        ax_memory.axvline(min(model.best_segments, model.n_layers), color="tab:red", ls="--", lw=1,
                          label=f"optimum sqrt(n a / c) = {model.best_segments:.1f}")
    ax_memory.axvline(math.sqrt(plans[0].n_layers) if plans else 1, color="tab:green", ls=":", lw=1,
                      label="sqrt(n)")
    if plain is not None:
        ax_memory.axhline(plain.peak_bytes / MIB, color="black", lw=1, label="no checkpointing")
    ax_memory.set(xscale="log", xlabel="segments (n / k)", ylabel="activation MiB (CPU accounting)",
                  title=title or "memory vs segments")
    ax_memory.set_xticks(segs, [str(s) for s in segs])
    ax_memory.set_ylim(bottom=0)
    ax_memory.legend(fontsize=7)
    ax_time.plot(segs, [m.step_seconds * 1e3 for m in plans], "o-", label="checkpointed")
    if plain is not None:
        ax_time.axhline(plain.step_seconds * 1e3, color="black", lw=1, label="no checkpointing")
    ax_time.set(xscale="log", xlabel="segments (n / k)", ylabel="median step ms", title="step time vs segments")
    ax_time.set_xticks(segs, [str(s) for s in segs])
    ax_time.set_ylim(bottom=0)
    ax_time.legend(fontsize=7)


def draw_prediction(ax, model: ActivationModel, every: int, measured: PlanMeasurement | None = None) -> None:
    """The slider's picture: predicted peak over every divisor plan of n, the chosen plan, its measurement."""
    everies = divisors(model.n_layers)
    segs = [model.n_layers // e for e in everies]
    ax.plot(segs, [model.peak(e) / MIB for e in everies], "o:", color="gray", label="predicted step peak")
    ax.plot(segs, [model.kept(e) / MIB for e in everies], "s:", color="silver", label="predicted kept")
    ax.axhline(model.peak(None) / MIB, color="black", lw=1, label="no checkpointing (predicted)")
    chosen = model.n_layers // every if model.n_layers % every == 0 else math.ceil(model.n_layers / every)
    ax.plot([chosen], [model.peak(every) / MIB], "o", color="tab:red", ms=9, label="your plan: predicted")
    if measured is not None:
        ax.plot([chosen], [measured.peak_bytes / MIB], "*", color="tab:blue", ms=13, label="your plan: measured")
    ax.set(xscale="log", xlabel="segments", ylabel="activation MiB",
           title=f"n={model.n_layers}, every={every}: best at sqrt(n a/c) = {model.best_segments:.1f} segments")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------- widget --
@functools.lru_cache(maxsize=64)
def _measured(n_layers: int, every: int | None, batch_size: int) -> PlanMeasurement:
    config = deep_config(n_layers)
    torch.manual_seed(0)
    model = TinyTransformer(config)
    return measure_plan(model, token_batch(config, batch_size), every, steps=3)


def plan_explorer(model: ActivationModel, forward_share: float, batch_size: int = 16,
                  layer_choices=(4, 8, 12, 16, 24, 32)):
    """Sliders for layers and layers-per-segment: predicted vs measured memory and time.

    model: an ActivationModel fitted on the 16-layer runs (a, c and base do not depend on n);
    forward_share: the forward's share of a plain step, for the time prediction (one extra forward).
    Each new (layers, every) is measured once, live (a second or two), then cached.
    """
    import ipywidgets as widgets

    def draw(ax, n_layers, every):
        every = max(1, min(every, n_layers))
        measured = _measured(n_layers, every, batch_size)
        plain = _measured(n_layers, None, batch_size)
        draw_prediction(ax, model.with_layers(n_layers), every, measured)
        predicted_s = predicted_step_seconds(plain.step_seconds, forward_share, 1.0)
        ax.text(0.02, 0.04, f"step time: plain {plain.step_seconds * 1e3:.0f} ms; checkpointed predicted "
                            f"{predicted_s * 1e3:.0f} ms, measured {measured.step_seconds * 1e3:.0f} ms",
                transform=ax.transAxes, fontsize=8)

    choices = list(layer_choices)
    if not choices or any(not isinstance(n, int) or n < 1 for n in choices):
        raise ValueError(f"layer_choices must be positive ints, got {layer_choices!r}")
    start = 16 if 16 in choices else choices[0]
    return interactive_figure(draw, "Checkpointing plan explorer",
                              n_layers=widgets.SelectionSlider(options=choices, value=start, **WIDE),
                              every=widgets.IntSlider(value=min(4, start), min=1, max=max(choices), **WIDE))

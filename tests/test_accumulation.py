"""Gradient accumulation (efftrain_lib/accumulation.py): exactly a big batch, and clear errors.

Tolerances (float32, tiny model; the same sums in another order differ by ~1e-8 here):
  accumulated vs full-batch gradient          max |diff| <= 1e-6 (measured ~1e-9 .. 1e-8)
  parameters after several steps              max |diff| <= 1e-5
  "not equivalent" (naive normalization, BN)  max |diff| >= 1e-3 (measured 1e-2 and more)
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from efftrain_lib.accumulation import (
    GradientAccumulator,
    accumulation_step,
    count_labelled,
    split_batch,
    streaming_accumulation_step,
    summed_loss,
    windows,
)
from efftrain_lib.accumulation_explorer import profile_accumulation
from efftrain_lib.comparing import gradient_dict, max_abs_diff
from efftrain_lib.models import TinyConfig, TinyTransformer, language_model_loss
from efftrain_lib.training import training_step

TOL = 1e-6
CONFIG = TinyConfig(vocab_size=16, hidden_size=16, n_layers=1, n_heads=2, ffn_dim=32, max_seq_len=12)


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyTransformer(CONFIG)


def _batch(n, seq=10, seed=0, lengths=None):
    """n sequences of token ids; labels -100 after each sequence's length (right padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CONFIG.vocab_size, (n, seq), generator=g)
    labels = torch.randint(0, CONFIG.vocab_size, (n, seq), generator=g)
    if lengths is not None:
        for row, length in enumerate(lengths):
            labels[row, length:] = -100
    return ids, labels


class Recorder(torch.optim.SGD):
    """SGD that remembers the gradient it was asked to apply, at every step."""

    def __init__(self, params, lr=0.1, **kwargs):
        super().__init__(params, lr=lr, **kwargs)
        self.seen: list[dict[int, torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.seen.append({id(p): p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None})
        return super().step(closure)


def _full_batch_grads(model, micro_batches):
    """The reference: one forward and backward of the concatenated batch, token-mean loss."""
    model = copy.deepcopy(model)
    inputs = torch.cat([x for x, _ in micro_batches])
    labels = torch.cat([y for _, y in micro_batches])
    language_model_loss(model(inputs), labels).backward()
    return gradient_dict(model)


def _step_grads(model, micro_batches, **kwargs):
    model = copy.deepcopy(model)
    opt = Recorder(model.parameters())
    loss = accumulation_step(model, opt, micro_batches, **kwargs)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[i]: g for i, g in opt.seen[-1].items()}, loss, len(opt.seen)


# ------------------------------------------------------------------------------- equivalence --
def test_equal_micro_batches_give_the_big_batch_gradient():
    model = _model()
    ids, labels = _batch(8)
    micro = split_batch((ids, labels), 2)
    grads, loss, steps = _step_grads(model, micro)
    ref = _full_batch_grads(model, micro)
    diff = max_abs_diff(grads, ref)
    assert steps == 1
    assert diff <= TOL, f"max |diff| {diff:.2e}"
    assert loss == pytest.approx(language_model_loss(model(ids), labels).item(), rel=1e-6)


def test_unequal_token_counts_still_give_the_big_batch_gradient_and_mean_of_means_does_not():
    model = _model()
    micro = [_batch(2, seed=1, lengths=[1, 2]), _batch(2, seed=2, lengths=[10, 9])]  # 3 vs 19 tokens
    grads, loss, _ = _step_grads(model, micro)
    ref = _full_batch_grads(model, micro)
    assert max_abs_diff(grads, ref) <= TOL
    # The 2024 bug: each micro-batch's token mean, divided by k.
    naive = copy.deepcopy(model)
    for x, y in micro:
        (language_model_loss(naive(x), y) / len(micro)).backward()
    naive_diff = max_abs_diff(gradient_dict(naive), ref)
    assert naive_diff >= 1e-3, f"mean of means should be visibly wrong here, max |diff| {naive_diff:.2e}"
    assert loss == pytest.approx(language_model_loss(model(torch.cat([x for x, _ in micro])),
                                                     torch.cat([y for _, y in micro])).item(), rel=1e-6)


def test_the_reference_numeric_example():
    # REFERENCE.md: token counts 1 and 3 with losses 2 and 1,1,1 give 1.5 (naive) vs 1.25 (correct).
    losses = [torch.tensor([2.0]), torch.tensor([1.0, 1.0, 1.0])]
    naive = sum(l.mean() for l in losses) / len(losses)
    correct = sum(l.sum() for l in losses) / sum(len(l) for l in losses)
    assert naive.item() == 1.5 and correct.item() == 1.25


def test_summed_loss_and_counts_ignore_minus_100():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 3:] = -100
    assert count_labelled(labels) == 8
    expected = language_model_loss(logits, labels) * 8
    assert summed_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------- windows and partial ones --
def test_windows_include_the_partial_last_one():
    assert [len(w) for w in windows(range(10), 4)] == [4, 4, 2]
    assert [len(w) for w in windows(range(8), 4)] == [4, 4]
    assert [len(w) for w in windows(iter(range(3)), 1)] == [1, 1, 1]


def test_accumulator_equals_full_batch_training_including_the_partial_window():
    """10 micro-batches, k = 4: windows of 4, 4, 2. Each step must equal a full-batch step on its
    window (SGD with momentum, so every step's error would carry into the next)."""
    model = _model()
    micro = [_batch(2, seed=s, lengths=[3 + s % 7, 10]) for s in range(10)]
    ours = copy.deepcopy(model)
    acc = GradientAccumulator(ours, torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), 4)
    losses = acc.train(micro)
    assert len(losses) == 3 and acc.optimizer_steps == 3 and acc.micro_batches_seen == 10

    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref_losses = []
    for window in (micro[0:4], micro[4:8], micro[8:10]):
        loss = language_model_loss(ref(torch.cat([x for x, _ in window])), torch.cat([y for _, y in window]))
        loss.backward()
        opt.step()
        opt.zero_grad()
        ref_losses.append(loss.item())
    diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), ref.parameters()))
    assert diff <= 1e-5, f"max |diff| {diff:.2e} after 3 steps"
    assert losses == pytest.approx(ref_losses, rel=1e-5)


def test_the_seed_partial_window_bug_is_m_over_k():
    """The seed's train_epoch divides the leftover m micro-batches by k: a step m/k too small."""
    model = _model()
    micro = [_batch(2, seed=s) for s in range(2)]  # a partial window of m = 2 with k = 4
    seedlike = copy.deepcopy(model)
    for x, y in micro:
        (language_model_loss(seedlike(x), y) / 4).backward()
    ref = _full_batch_grads(model, micro)
    got = gradient_dict(seedlike)
    ratio = max_abs_diff({k: got[k] - 0.5 * ref[k] for k in ref}, {k: torch.zeros_like(v) for k, v in ref.items()})
    assert ratio <= TOL  # exactly half (m/k = 2/4) of the right gradient


# ------------------------------------------------------------- mixed precision, clip, schedule --
def test_grad_scaler_and_clipping_match_an_unaccumulated_run():
    model = _model()
    batches = [_batch(4, seed=s, lengths=[2, 5, 10, 7]) for s in range(3)]
    acc_model, big_model = copy.deepcopy(model), copy.deepcopy(model)
    acc_opt = torch.optim.AdamW(acc_model.parameters(), lr=1e-2)
    big_opt = torch.optim.AdamW(big_model.parameters(), lr=1e-2)
    acc_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    big_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    for batch in batches:
        accumulation_step(acc_model, acc_opt, split_batch(batch, 1), scaler=acc_scaler, max_grad_norm=0.5)
        accumulation_step(big_model, big_opt, [batch], scaler=big_scaler, max_grad_norm=0.5)
    diff = max((a - b).abs().max().item() for a, b in zip(acc_model.parameters(), big_model.parameters()))
    assert diff <= 1e-5, f"max |diff| {diff:.2e}"
    # One update per window: growth_interval=1 doubles the scale once per window, not once per micro-batch.
    assert acc_scaler.get_scale() == big_scaler.get_scale() == 2.0 ** (10 + len(batches))


def test_clipping_clips_the_window_gradient():
    model = _model()
    micro = split_batch(_batch(4, seed=3), 1)
    grads, _, _ = _step_grads(model, micro, max_grad_norm=0.01)
    ref = _full_batch_grads(model, micro)
    ref_norm = torch.sqrt(sum(g.pow(2).sum() for g in ref.values()))
    assert ref_norm > 0.01
    scaled = {k: v * (0.01 / (ref_norm + 1e-6)) for k, v in ref.items()}
    assert max_abs_diff(grads, scaled) <= 1e-8


def test_one_scheduler_step_per_optimizer_step():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    acc = GradientAccumulator(model, opt, 4, scheduler=sched)
    acc.train([_batch(2, seed=s) for s in range(10)])
    assert sched.last_epoch == 3 and opt.param_groups[0]["lr"] == 0.5**3


# ------------------------------------------------------------------- BatchNorm vs LayerNorm --
@pytest.mark.parametrize("norm, equivalent", [(nn.LayerNorm, True), (nn.BatchNorm1d, False)])
def test_batchnorm_is_not_equivalent_layernorm_is(norm, equivalent):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), norm(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(16, 6) * 3 + 1, torch.randint(0, 3, (16,))
    micro = split_batch((x, y), 4)
    grads, _, _ = _step_grads(model, micro)
    ref = _full_batch_grads(model, micro)
    diff = max_abs_diff(grads, ref)
    assert (diff <= TOL) if equivalent else (diff >= 1e-3), f"{norm.__name__}: max |diff| {diff:.2e}"


# -------------------------------------------------------------------------------- bad input --
@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "4"])
def test_accumulation_steps_must_be_a_positive_integer(steps):
    model = _model()
    with pytest.raises(ValueError, match="accumulation_steps must be an integer >= 1"):
        GradientAccumulator(model, torch.optim.SGD(model.parameters(), lr=0.1), steps)


def test_empty_window_and_empty_batches():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="empty window"):
        accumulation_step(model, opt, [])
    with pytest.raises(ValueError, match="batches is empty"):
        GradientAccumulator(model, opt, 2).train([])


def test_window_without_labelled_positions_is_an_error_and_nothing_moves():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    ids, labels = _batch(2)
    labels[:] = -100
    with pytest.raises(ValueError, match="no labelled position"):
        accumulation_step(model, torch.optim.SGD(model.parameters(), lr=0.1), [(ids, labels)] * 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_labels_not_matching_the_logits():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    good = _batch(2)
    bad = (good[0], good[1][:, :5])
    with pytest.raises(ValueError, match=r"micro-batch 1: labels of shape \(2, 5\) do not match logits of shape \(2, 10, 16\)"):
        accumulation_step(model, opt, [good, bad])
    assert all(p.grad is None for p in model.parameters()), "a failed window must not leave gradients behind"


def test_other_bad_arguments():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="GradScaler's interface"):
        accumulation_step(model, opt, [_batch(2)], scaler=object())
    with pytest.raises(ValueError, match="max_grad_norm must be a positive number"):
        accumulation_step(model, opt, [_batch(2)], max_grad_norm=0)
    with pytest.raises(ValueError, match="pair"):
        accumulation_step(model, opt, [_batch(2)[0]])
    with pytest.raises(ValueError, match="micro_batch_size"):
        split_batch(_batch(2), 0)


# ---------------------------------------------------------------------------- a stream --
def _stream_step(model, micro_batches, **kwargs):
    model = copy.deepcopy(model)
    opt = Recorder(model.parameters())
    loss = streaming_accumulation_step(model, opt, iter(micro_batches), **kwargs)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[i]: g for i, g in opt.seen[-1].items()}, loss, len(opt.seen)


def test_a_stream_gives_the_big_batch_gradient_counting_tokens_as_they_come():
    model = _model()
    micro = [_batch(2, seed=1, lengths=(1, 2)), _batch(2, seed=2, lengths=(0, 0)), _batch(3, seed=3, lengths=(10, 7, 9))]
    grads, loss, steps = _stream_step(model, micro)
    reference = _full_batch_grads(model, micro)
    assert steps == 1 and max_abs_diff(grads, reference) <= TOL
    assert loss == pytest.approx(_step_grads(model, micro)[1], rel=1e-6)
    # with a scaler and clipping too: the same step as the window read ahead (lookahead=True)
    scaled = dict(scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8), max_grad_norm=0.05)
    ahead = _step_grads(model, micro, **scaled)[0]
    assert max_abs_diff(_stream_step(model, micro, **{**scaled, "scaler": torch.amp.GradScaler("cpu", init_scale=2.0**8)})[0],
                        ahead) <= TOL


def test_a_stream_is_read_one_micro_batch_at_a_time():
    model = _model()
    backwards, reads = [], []
    model.embed_tokens.weight.register_hook(lambda grad: backwards.append(1))
    micro = [_batch(2, seed=s) for s in range(4)]

    def stream():
        for pair in micro:
            reads.append(len(backwards))  # backward passes done when this micro-batch is read
            yield pair

    streaming_accumulation_step(model, torch.optim.SGD(model.parameters(), lr=0.1), stream())
    assert reads == [0, 1, 2, 3]


def test_an_empty_or_unlabelled_stream_is_an_error_and_leaves_nothing_behind():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = copy.deepcopy(model.state_dict())
    ids, labels = _batch(2)
    for stream, message in ((iter([]), "empty or has no labelled position"),
                            (iter([(ids, torch.full_like(labels, -100))] * 2), "no labelled position")):
        with pytest.raises(ValueError, match=message):
            streaming_accumulation_step(model, opt, stream)
        assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="pair"):
        streaming_accumulation_step(model, opt, iter([_batch(2), "not a pair"]))
    assert all(p.grad is None for p in model.parameters()), "a failed stream must not leave gradients behind"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="custom loss_fn"):
        training_step(model, opt, iter([_batch(2)]), loss_fn=language_model_loss, lookahead=False)


# ------------------------------------------------------------------------- memory and time --
def test_the_meter_records_one_step_per_window_with_marks_per_micro_batch():
    from efftrain_lib.meter import MemoryMeter

    model = _model()
    meter = MemoryMeter()
    acc = GradientAccumulator(model, torch.optim.AdamW(model.parameters()), 3)
    seen = []
    acc.train([_batch(2, seed=s) for s in range(5)], meter=meter, on_step=lambda i, loss: seen.append(i))
    assert len(meter.records) == 2 and seen == [0, 1]
    labels = [name for name, _ in meter.records[0].samples]
    assert labels == ["start", "forward 1", "backward 1", "forward 2", "backward 2", "forward 3", "backward 3",
                      "optimizer step", "end"]
    assert [name for name, _ in meter.records[1].samples][-3:] == ["backward 2", "optimizer step", "end"]


def test_profile_smaller_micro_batches_keep_fewer_activations():
    model = _model()
    batch = _batch(8)
    profiles = profile_accumulation(model, batch, [8, 4, 1], repeats=1, progress=False)
    assert [(p.micro_batch_size, p.accumulation_steps, p.effective_batch) for p in profiles] == [
        (8, 1, 8), (4, 2, 8), (1, 8, 8)]
    acts = [p.peak.activations for p in profiles]
    assert acts[0] > acts[1] > acts[2] > 0
    # Weights, gradients and Adam state do not depend on the micro-batch size.
    assert len({(p.peak.weights, p.peak.optimizer_state) for p in profiles}) == 1
    assert all(p.seconds_per_window > 0 for p in profiles)


# ------------------------------------------------------------------ the slider's logic --
def _profile(micro, k, acts_mib, seconds):
    from efftrain_lib.accumulation_explorer import AccumulationProfile
    from efftrain_lib.meter import MemoryBreakdown

    mib = 2**20
    return AccumulationProfile(micro, k, seconds, MemoryBreakdown(weights=mib, gradients=mib, optimizer_state=2 * mib,
                                                                  activations=int(acts_mib * mib)))


def test_configurations_make_exactly_the_effective_batch():
    from efftrain_lib.accumulation_explorer import configurations

    assert configurations(32) == [(32, 1), (16, 2), (8, 4), (4, 8), (2, 16), (1, 32)]
    assert configurations(12) == [(12, 1), (6, 2), (4, 3), (3, 4), (2, 6), (1, 12)]
    with pytest.raises(ValueError, match="effective_batch"):
        configurations(0)


def test_tradeoff_rows_are_relative_to_the_largest_micro_batch():
    from efftrain_lib.accumulation_explorer import tradeoff_rows

    rows = tradeoff_rows([_profile(2, 4, 1.0, 0.2), _profile(8, 1, 4.0, 0.1)])
    assert [r["micro_batch"] for r in rows] == [8, 2]
    assert rows[0]["memory_vs_baseline"] == 1.0 and rows[0]["time_vs_baseline"] == 1.0
    assert rows[1]["peak_mib"] == pytest.approx(5.0) and rows[1]["memory_vs_baseline"] == pytest.approx(5 / 8)
    assert rows[1]["time_vs_baseline"] == pytest.approx(2.0) and rows[1]["ms_per_effective_batch"] == pytest.approx(200)
    with pytest.raises(ValueError, match="one effective batch"):
        tradeoff_rows([_profile(2, 4, 1.0, 0.2), _profile(8, 2, 4.0, 0.1)])
    with pytest.raises(ValueError, match="no profiles"):
        tradeoff_rows([])


def test_the_7b_activation_estimate_is_korthikanti():
    from efftrain_lib.accumulation_explorer import activation_gb_7b

    # s*b*h*(34 + 5*a*s/h) bytes per layer, 32 layers: 2048*4096*(34 + 80) = 0.956 GB per layer at b = 1.
    assert activation_gb_7b(1) == pytest.approx(32 * 2048 * 4096 * 114 / 1e9)
    assert activation_gb_7b(8) == pytest.approx(8 * activation_gb_7b(1))
    with pytest.raises(ValueError):
        activation_gb_7b(0)


def test_drawings_render_on_agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from efftrain_lib.accumulation_explorer import draw_7b_estimate, draw_tradeoff

    fig, axes = plt.subplots(1, 2)
    draw_tradeoff(axes, [_profile(8, 1, 4.0, 0.1), _profile(4, 2, 2.0, 0.12), _profile(2, 4, 1.0, 0.2)], 4)
    assert "b=4, k=2" in axes[0].get_title() and len(axes[1].patches) >= 3
    fig2, ax = plt.subplots()
    draw_7b_estimate(ax, effective_batch=64, micro_batch=4)
    assert len(ax.lines) >= 2
    plt.close("all")



def test_tradeoff_explorer_redraws_a_png_without_pyplot():
    # It drew with plt.subplots + plt.show() in an Output: under `%matplotlib widget` every slider
    # move left another ipympl canvas. Now it is efftrain_lib.widgets' PNG shell, like the others.
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from efftrain_lib.accumulation_explorer import tradeoff_explorer

    before = plt.get_fignums()
    box = tradeoff_explorer([_profile(8, 1, 4.0, 0.1), _profile(4, 2, 2.0, 0.12)])
    slider = box.children[0].children[0]
    assert slider.value == 8 and slider.options == (("b=8, k=1", 8), ("b=4, k=2", 4)) and not slider.continuous_update
    slider.value = 4  # redraws
    assert repr(box).startswith("Accumulation trade-off explorer") and plt.get_fignums() == before

# ------------------------------------------------------------ the real implementation: accelerate --
def test_equals_accelerate_accumulate_on_equal_micro_batches_and_shows_its_k_normalization():
    """Hugging Face accelerate's `accumulate()` divides each micro-batch loss by k in backward and syncs
    every k steps. On equal micro-batches our step is the same computation (measured: bit-identical);
    with unequal token counts a token-mean loss through accelerate is the mean of micro-batch means."""
    accelerate = pytest.importorskip("accelerate")

    model = _model()
    results = {}
    for name, lengths in (("equal", [10, 10]), ("unequal", None)):
        micro = ([_batch(2, seed=s) for s in range(4)] if name == "equal"
                 else [_batch(2, seed=s, lengths=ls) for s, ls in enumerate([[1, 2], [10, 10], [3, 3], [9, 10]])])
        accelerator = accelerate.Accelerator(gradient_accumulation_steps=4, cpu=True)
        theirs = copy.deepcopy(model)
        opt = torch.optim.SGD(theirs.parameters(), lr=0.1)
        theirs, opt = accelerator.prepare(theirs, opt)
        for x, y in micro:
            with accelerator.accumulate(theirs):
                accelerator.backward(language_model_loss(theirs(x), y))
                opt.step()
                opt.zero_grad()
        ours = copy.deepcopy(model)
        accumulation_step(ours, torch.optim.SGD(ours.parameters(), lr=0.1), micro)
        results[name] = max((p - q).abs().max().item() for p, q in zip(ours.parameters(), theirs.parameters()))
    assert results["equal"] <= 1e-7, results
    assert results["unequal"] >= 1e-4, results  # accelerate's loss / k is the mean of means here


def test_autocast_dtype_reaches_the_forward_pass():
    """autocast_dtype runs the forward in that dtype (bf16; fp16 with a GradScaler is the GPU recipe,
    exercised here on a tiny CPU model); None is fp32. Anything else is refused."""
    model = _model()
    seen = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    micro = [_batch(2)]
    accumulation_step(model, torch.optim.SGD(model.parameters(), lr=0.1), micro, autocast_dtype=torch.bfloat16)
    accumulation_step(model, torch.optim.SGD(model.parameters(), lr=0.1), micro, scaler=torch.amp.GradScaler("cpu"),
                      autocast_dtype=torch.float16)
    accumulation_step(model, torch.optim.SGD(model.parameters(), lr=0.1), micro)
    assert seen == [torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(ValueError, match="autocast_dtype must be None"):
        accumulation_step(model, torch.optim.SGD(model.parameters(), lr=0.1), micro, autocast_dtype=torch.float64)

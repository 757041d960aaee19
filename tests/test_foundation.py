"""Devices, the tiny transformer, the data and the training loop: the pieces every chapter stands on."""

import pytest
import torch

from efftrain_lib import data
from efftrain_lib.devices import low_precision_dtype, get_device, seed_everything
from efftrain_lib.models import TinyConfig, TinyTransformer, generate, language_model_loss, load_pretrained
from efftrain_lib.training import evaluate, train

SMALL = TinyConfig(vocab_size=data.VOCAB_SIZE, hidden_size=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=16)


def test_cpu_is_the_default_without_cuda_and_autocast_uses_bf16_there():
    if not torch.cuda.is_available():
        assert get_device().type == "cpu"
        with pytest.raises(ValueError, match="CUDA was requested"):
            get_device("cuda")
    assert low_precision_dtype("cpu") == torch.bfloat16


def test_seeding_makes_initialisation_repeatable():
    seed_everything(3)
    a = TinyTransformer(SMALL).state_dict()
    seed_everything(3)
    b = TinyTransformer(SMALL).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_module_names_follow_llama_so_lora_targets_mean_the_same_as_in_peft():
    names = {name for name, _ in TinyTransformer(SMALL).named_modules()}
    for suffix in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]:
        assert f"layers.0.{suffix}" in names and f"layers.1.{suffix}" in names
    assert {"embed_tokens", "lm_head", "norm"} <= names


def test_the_model_is_causal():
    model = TinyTransformer(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % SMALL.vocab_size
    a, b = model(ids), model(changed)
    assert torch.equal(a[:, :7], b[:, :7]), "positions before 7 must not see token 7"
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_bad_configs_and_inputs_are_named():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TinyConfig(hidden_size=30, n_heads=4)
    with pytest.raises(ValueError, match="n_layers must be >= 1"):
        TinyConfig(n_layers=0)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        TinyTransformer(SMALL)(torch.zeros(1, 17, dtype=torch.long))


def test_tokenizer_round_trips_and_maps_unknown_characters_to_question_marks():
    text = data.load_text("sonnets")[:200]
    assert data.decode(data.encode(text)) == text
    assert data.decode(data.encode("naïve")) == "na?ve"
    with pytest.raises(ValueError, match="available"):
        data.load_text("moby_dick")


def test_batches_depend_only_on_seed_and_step_and_targets_are_shifted_inputs():
    tokens = data.encode(data.load_text("founding_documents"))
    get_batch = data.batch_sampler(tokens, batch_size=4, seq_len=16, seed=1)
    x5, y5 = get_batch(5)
    get_batch(0)
    assert torch.equal(get_batch(5)[0], x5)
    assert x5.shape == y5.shape == (4, 16)
    assert torch.equal(x5[:, 1:], y5[:, :-1])
    with pytest.raises(ValueError, match="too short"):
        data.batch_sampler(tokens[:10], 2, 16)


def test_training_reduces_the_loss_and_reports_each_step():
    seed_everything(0)
    model = TinyTransformer(SMALL)
    tokens = data.encode(data.load_text("sonnets"))
    get_batch = data.batch_sampler(tokens, 8, 16)
    seen = []
    log = train(model, get_batch, steps=40, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
                on_step=lambda step, loss: seen.append(step), progress=False)
    assert seen == list(range(40)) and len(log.step_seconds) == 40
    assert sum(log.losses[-5:]) / 5 < log.losses[0] - 0.5, "40 AdamW steps should cut the loss by > 0.5 nats"
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        train(model, get_batch, steps=0, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_training_marks_each_phase_for_a_meter():
    events = []

    class RecordingMeter:
        def step(self, model, optimizer):
            events.append("start")
            return torch.enable_grad()

        def mark(self, label):
            events.append(label)

    model = TinyTransformer(SMALL)
    get_batch = data.batch_sampler(data.encode(data.load_text("sonnets")), 2, 8)
    train(model, get_batch, steps=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
          meter=RecordingMeter(), progress=False)
    assert events == ["start", "forward", "backward", "optimizer step"]
    events.clear()  # clipping is a phase of its own (it allocates: one norm per gradient tensor)
    train(model, get_batch, steps=1, accumulation_steps=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
          max_grad_norm=1.0, meter=RecordingMeter(), progress=False)
    assert events == ["start", "forward 1", "backward 1", "forward 2", "backward 2", "clip", "optimizer step"]


def test_the_step_frees_the_logits_before_backward():
    # Holding the logits through backward would cost tokens x vocabulary (a GB at 8 x 2048 x 32k in bf16).
    import weakref

    model = TinyTransformer(SMALL)
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(weakref.ref(out)))
    alive_in_backward = []
    model.layers[0].register_full_backward_hook(lambda *args: alive_in_backward.append(seen[-1]() is not None))
    get_batch = data.batch_sampler(data.encode(data.load_text("sonnets")), 2, 8)
    train(model, get_batch, steps=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    assert alive_in_backward == [False]


def test_the_shipped_checkpoint_has_learned_the_sonnets():
    model = load_pretrained()
    _, val = data.split_tokens(data.encode(data.load_text("sonnets")))
    batches = data.fixed_batches(val, 4, 8, 64)
    random_init = TinyTransformer(model.config)
    uniform = torch.log(torch.tensor(float(data.VOCAB_SIZE))).item()
    assert evaluate(random_init, batches) == pytest.approx(uniform, abs=0.1)
    assert evaluate(model, batches) < 2.5, "the pretrained model should beat uniform guessing (4.56 nats) by far"
    assert model.config.dropout == 0.0


def test_loss_ignores_minus_100_targets():
    logits = torch.randn(1, 3, 5)
    targets = torch.tensor([[1, -100, 2]])
    expected = torch.nn.functional.cross_entropy(logits[0, [0, 2]], torch.tensor([1, 2]))
    assert torch.allclose(language_model_loss(logits, targets), expected)


def test_generation_is_repeatable_and_greedy_at_temperature_zero():
    model = load_pretrained()
    prompt = data.encode("Shall I")
    sampled = generate(model, prompt, 20, temperature=0.8, seed=1)
    assert torch.equal(sampled, generate(model, prompt, 20, temperature=0.8, seed=1))
    assert torch.equal(sampled[:7], prompt) and len(sampled) == 27
    greedy = generate(model, prompt, 5)
    logits = model.eval()(prompt[None])[0, -1]
    assert greedy[7] == logits.argmax()
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 1, temperature=-1)


def test_one_cpu_thread_is_set_on_cpu_only():
    from efftrain_lib.devices import describe, use_one_cpu_thread

    before = torch.get_num_threads()
    try:
        use_one_cpu_thread("cpu")
        assert torch.get_num_threads() == 1
        assert describe("cpu").startswith("cpu: 1 thread,")
    finally:
        torch.set_num_threads(before)

"""The speed work must not change what is computed: the fused-kernel GRU, its PyTorch fallback and
nn.GRU agree; bf16 stays close; generation equals the straightforward re-run at the same precision."""

import numpy as np
import pytest
import torch

import charrnn
from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.generation.sampling import sample
from charrnn.generation.torch_model import CharModel
from charrnn.kernels import build, gates, step
from charrnn.model.network import CharRNN
from charrnn.model.stepper import Stepper


@pytest.fixture(params=["fused", "pytorch"])
def path(request, monkeypatch):
    if request.param == "fused" and not build.available():
        pytest.skip("no C compiler here: the fused kernels are unavailable")
    if request.param == "pytorch":  # as without a C compiler
        monkeypatch.setattr(gates, "usable", lambda *a, **k: False)
        monkeypatch.setattr(step, "usable", lambda *a, **k: False)
    return request.param


def reference(model: CharRNN) -> CharRNN:
    """The same weights in float64, run below through PyTorch's own nn.GRU (not the fast path)."""
    ref = CharRNN(model.config).double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    return ref


def module_forward(model: CharRNN, ids: torch.Tensor, state: torch.Tensor):
    y, new_state = model.rnn(model.embedding(ids), state)
    return model.dense(y), new_state


@pytest.mark.parametrize("layers", [1, 2])
def test_fast_gru_matches_nn_gru_forward_and_gradients(path, layers):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=30, embedding_size=12, hidden_size=48, num_layers=layers))
    ref = reference(model)
    ids = torch.randint(0, 30, (6, 17))
    state = torch.randn(layers, 6, 48) * 0.5
    targets = torch.randint(0, 30, (6, 17))
    logits, new_state = model(ids, state)
    ref_logits, ref_state = module_forward(ref, ids, state.double())
    torch.testing.assert_close(logits.double(), ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_state.double(), ref_state, atol=1e-5, rtol=1e-5)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    ref_loss = torch.nn.functional.cross_entropy(ref_logits.flatten(0, 1), targets.flatten())
    loss.backward()
    ref_loss.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_bf16_stays_close_to_fp32(path):
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=30, embedding_size=12, hidden_size=64))
    ids = torch.randint(0, 30, (8, 40))
    fp32, _ = model(ids, dtype=torch.float32)
    bf16, _ = model(ids, dtype=torch.bfloat16)
    assert ((bf16 - fp32).norm() / fp32.norm()).item() < 2e-2


@pytest.mark.parametrize(
    "precision, batch, layers",
    [
        ("fp32", 1, 1),
        ("fp32", 3, 1),
        ("bf16", 1, 1),
        ("bf16", 9, 1),
        ("fp32", 2, 2),
        ("bf16", 5, 2),
        ("int8", 1, 1),
        ("int8", 4, 2),
    ],
)
def test_generation_equals_the_straightforward_loop(path, precision, batch, layers):
    """Priming + one-character steps with carried state give exactly the text that re-running the whole
    sequence through forward() at the same precision gives, sample by sample."""
    if precision == "int8" and (path == "pytorch" or not build.available()):
        pytest.skip("int8 runs on the step kernels only")
    torch.manual_seed(2)
    vocab = Vocab.from_text("abcdefghij klmnop\n")
    model = CharModel(
        CharRNN(ModelConfig(vocab_size=len(vocab), embedding_size=8, hidden_size=32, num_layers=layers)),
        vocab,
        precision=precision,
    )
    fast = model.generate("abc", length=60, temperature=0.9, seed=4, num_samples=batch)
    dtype = {"bf16": torch.bfloat16, "int8": torch.int8}.get(precision, torch.float32)
    rng, texts = np.random.default_rng(4), ["abc"] * batch
    with torch.no_grad():
        for _ in range(60):
            ids = torch.from_numpy(np.stack([vocab.encode(t) for t in texts]).astype(np.int64))
            logits = model.model(ids, dtype=dtype)[0][:, -1].numpy()
            texts = [t + vocab.chars[i] for t, i in zip(texts, sample(logits, rng, temperature=0.9))]
    assert fast == texts


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("layers, hidden", [(1, 40), (2, 24)])
def test_a_row_generates_the_same_text_whatever_else_is_in_the_batch(precision, layers, hidden):
    """The step kernels sum each output in one fixed order, so a sample's text does not depend on the
    rows beside it (what lets the server batch users' requests) — including widths that do not fill a
    vector, several layers, and re-running the text through forward()."""
    if not build.available():
        pytest.skip("no C compiler here: the step kernels are unavailable")
    torch.manual_seed(3)
    vocab = Vocab.from_text("abcdefghij klmnop\n")
    net = CharRNN(ModelConfig(vocab_size=len(vocab), embedding_size=8, hidden_size=hidden, num_layers=layers))
    dtype = {"bf16": torch.bfloat16, "int8": torch.int8}.get(precision, torch.float32)
    texts = ["abc abc", "hello p", "ppppppp", "ja ja j", "kon\nkon"[:7]]
    ids = torch.from_numpy(np.stack([vocab.encode(t) for t in texts]).astype(np.int64))  # (5, 7)
    net.eval()
    alone, together = Stepper(net, dtype), Stepper(net, dtype)
    state_alone, state_together = net.initial_state(1), net.initial_state(len(texts))
    with torch.no_grad():
        for t in range(ids.shape[1]):  # step the second text alone and among the others
            logits_alone, state_alone = alone.step(ids[1:2, t], state_alone)
            logits_together, state_together = together.step(ids[:, t], state_together)
            assert torch.equal(logits_alone[0], logits_together[1])
        batched, _ = net(ids, dtype=dtype)  # and re-running the texts, together or one by one
        assert torch.equal(batched[1, -1], logits_alone[0])
        for row in range(ids.shape[0]):
            assert torch.equal(net(ids[row : row + 1], dtype=dtype)[0][0], batched[row])


def test_auto_precision_picks_the_fastest_measured(tiny_run, small_text, tmp_path):
    from charrnn.generation.torch_model import load
    from charrnn.kernels import native
    from charrnn.model.precision import bf16_trains_faster, precision_name

    low = "bf16" if native.bf16_native_cpu() else "fp32"
    model = load(tiny_run)  # the PyTorch path: the torch-free one follows the same rule (tests/generation/test_runs.py)

    def chosen(batch):
        return precision_name(model.dtype_for(batch))

    # With AVX512-VNNI, int8 at every batch size; else bf16 wherever the step kernels run it natively ...
    if native.int8_native() and build.available():
        assert chosen(1) == chosen(64) == "int8"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "int8_native", lambda: False)
        assert chosen(1) == (low if build.available() else "fp32")
        assert chosen(native.BF16_MIN_BATCH) == low
        # ... and through PyTorch's products (no C compiler) only from BF16_MIN_BATCH rows
        patch.setattr(step, "usable", lambda *a, **k: False)
        assert chosen(1) == "fp32" and chosen(native.BF16_MIN_BATCH) == low
    assert load(tiny_run, precision="fp32").dtype_for(64) == torch.float32
    import json
    import os

    from charrnn import TrainConfig, Trainer

    trainer = Trainer.create(
        tmp_path / "p",
        TrainConfig(text=str(small_text), max_steps=2, batch_size=8, seq_len=20),
        dict(embedding_size=8, hidden_size=16),
        out=open(os.devnull, "w"),
    )
    trainer.fit()
    record = json.loads((tmp_path / "p" / "metrics.jsonl").read_text().splitlines()[-1])
    # Training's auto: bf16 only where it trains faster (AMX), and the run records what auto chose.
    assert record["precision"] == ("bf16" if bf16_trains_faster(torch.device("cpu")) else "fp32")


def test_loading_the_kernels_keeps_ieee_subnormals():
    # Linking with -ffast-math would add crtfastmath.o, turning on flush-to-zero for the whole process.
    import numpy as np

    from charrnn.kernels import build

    if not build.available():
        pytest.skip("no C compiler: the fused kernels are not built here")
    tiny = np.finfo(np.float32).tiny
    assert np.float32(tiny) / np.float32(4) > 0


def test_int8_generation_stays_close_to_fp32_and_training_refuses_it(tiny_run, small_text):
    """int8 quantises weights per row and the state per step: the loss of a trained model moves by a
    hair, and it is a generation precision only."""
    if not build.available():
        pytest.skip("int8 runs on the step kernels only")
    from charrnn.errors import CharRNNError

    text = small_text.read_text()[:3000]
    fp32 = charrnn.load(tiny_run, precision="fp32").evaluate(text)["loss"]
    int8 = charrnn.load(tiny_run, precision="int8")
    assert int8.dtype_for(1) == int8.dtype_for(64) == "int8"  # charrnn.load's torch-free model names it
    assert abs(int8.evaluate(text)["loss"] - fp32) < 0.02
    assert len(int8.generate("a", length=50, seed=1)[0]) == 51
    with pytest.raises(CharRNNError, match="precision must be one of auto, bf16, fp32"):
        charrnn.TrainConfig(precision="int8")

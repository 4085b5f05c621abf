"""KernelModel generates without PyTorch exactly what CharModel generates with it: the same logits, states
and text, bit for bit, at every precision, batch size and layer count, with long prompts primed in pieces."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.generation import loop
from charrnn.generation.kernel_model import KernelBackend, KernelModel, KernelWeights
from charrnn.generation.torch_model import CharModel
from charrnn.kernels import build
from charrnn.model.network import CharRNN

VOCAB = Vocab.from_text("abcdefghij klmnop\nqrstuvwxyz.,;:!?ABC")


@pytest.fixture(autouse=True)
def kernels():
    if not build.available():
        pytest.skip("no C compiler here: the step kernels are unavailable")


def models(precision: str, layers: int, hidden: int = 24, embedding: int = 10, seed: int = 0, threads: int = 2):
    """A CharModel with random weights (scaled up, so the gates saturate and quantisation matters), and a
    KernelModel over the same weights as a safetensors file would give them."""
    torch.manual_seed(seed)
    net = CharRNN(ModelConfig(vocab_size=len(VOCAB), embedding_size=embedding, hidden_size=hidden, num_layers=layers))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(3.0)
    arrays = {name: tensor.numpy().copy() for name, tensor in net.state_dict().items()}
    ours = KernelModel(arrays, net.config, VOCAB, dtype_for=lambda batch: precision, threads=threads)
    return CharModel(net, VOCAB, precision=precision), ours


def prompt(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(VOCAB), length).astype(VOCAB.dtype)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("layers, hidden", [(1, 24), (2, 40)])
def test_priming_and_stepping_give_pytorchs_logits_and_states(precision, layers, hidden):
    reference, ours = models(precision, layers, hidden)
    theirs, mine = reference.backend(5), ours.backend(5)
    assert isinstance(mine, KernelBackend) and mine.precision == theirs.precision == precision
    prompts = [prompt(7, 1), prompt(1, 2), prompt(130, 3)]
    logits_t, state_t = theirs.prime(prompts, 2)
    logits_n, state_n = mine.prime(prompts, 2)
    assert np.array_equal(logits_n, logits_t) and np.array_equal(state_n, state_t.numpy())
    rng = np.random.default_rng(4)
    for _ in range(12):
        ids = rng.integers(0, len(VOCAB), 6)
        logits_t, state_t = theirs.step(ids, state_t)
        logits_n, state_n = mine.step(ids, state_n)
        assert np.array_equal(logits_n, logits_t) and np.array_equal(state_n, state_t.numpy())
    rows = [5, 0, 3]  # the server's continuous batching: rows leave, batches join
    taken_t, taken_n = theirs.take(state_t, rows), mine.take(state_n, rows)
    assert np.array_equal(taken_n, taken_t.numpy())
    joined_t, joined_n = theirs.join([taken_t, state_t]), mine.join([taken_n, state_n])
    ids = rng.integers(0, len(VOCAB), 9)
    assert np.array_equal(mine.step(ids, joined_n)[0], theirs.step(ids, joined_t)[0])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_the_same_text_as_pytorch(precision, layers, batch):
    reference, ours = models(precision, layers, seed=layers, threads=1 + batch % 2)  # threads never matter
    prompts = {1: [""], 5: ["abc", "hello", "zz top", "", "k"], 64: ["abc", "", "hello", "k"]}[batch]
    options = dict(length=40, temperature=0.9, top_k=8, seed=batch, num_samples=batch // len(prompts))
    texts = ours.generate(prompts, **options)
    assert len(texts) == batch and texts == reference.generate(prompts, **options)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_prompt_longer_than_a_piece_primes_to_the_same_state(precision):
    reference, ours = models(precision, 2, hidden=16, embedding=8)
    ids = prompt(2 * loop.PRIME_PIECE + 37, 5)  # three pieces would be two: the last takes the rest
    assert len(loop.pieces(ids)) == 2
    logits_t, state_t = reference.backend(2).prime([ids], 2)
    logits_n, state_n = ours.backend(2).prime([ids], 2)
    assert np.array_equal(logits_n, logits_t) and np.array_equal(state_n, state_t.numpy())


def test_the_table_and_packing_are_the_pytorch_paths():
    reference, ours = models("int8", 2)
    packed, weights = reference.model.packed_weights(torch.int8), ours.weights("int8")
    assert isinstance(weights, KernelWeights) and weights is ours.weights("int8")  # packed once
    assert np.array_equal(weights.table, packed.table.numpy())
    for (ih_t, hh_t), (ih_n, hh_n) in zip(packed.layers, weights.layers):
        pairs = [(hh_t.packed, hh_n)] + ([(ih_t.packed, ih_n)] if ih_n is not None else [])
        for torch_packed, numpy_packed in pairs:
            assert np.array_equal(torch_packed.weight.numpy(), numpy_packed.weight)
            assert np.array_equal(torch_packed.corr.numpy(), numpy_packed.corr)
    again = KernelWeights.from_arrays(ours.arrays, ours.config, "int8")
    assert np.array_equal(again.table, weights.table)
    assert ours.state_values() == 2 * 24 and ours.dtype_for(3) == "int8"


def test_mistakes_are_one_line():
    _, ours = models("fp32", 1)
    arrays, config = dict(ours.arrays), ours.config
    with pytest.raises(CharRNNError, match="no rnn.bias_hh_l0"):
        KernelModel({k: v for k, v in arrays.items() if k != "rnn.bias_hh_l0"}, config, VOCAB)
    with pytest.raises(CharRNNError, match=r"dense.bias is \(3,\)"):
        KernelModel({**arrays, "dense.bias": np.zeros(3, np.float32)}, config, VOCAB)
    with pytest.raises(CharRNNError, match="from a GRU"):
        KernelModel(arrays, ModelConfig(vocab_size=len(VOCAB), embedding_size=10, hidden_size=24, cell="lstm"), VOCAB)
    with pytest.raises(CharRNNError, match="precision must be one of"):
        KernelModel(arrays, config, VOCAB, dtype_for=lambda batch: "fp16").generate("a", length=2)
    backend = ours.backend(2)
    with pytest.raises(CharRNNError, match="character ids must be from 0"):
        backend.step(np.array([0, len(VOCAB)]), np.zeros((1, 2, 24), np.float32))
    with pytest.raises(CharRNNError, match="state must be float32"):
        backend.step(np.array([0, 1]), np.zeros((1, 3, 24), np.float32))


def test_generating_never_imports_torch(tmp_path):
    reference, ours = models("int8", 2)
    np.savez(tmp_path / "weights.npz", **ours.arrays)
    script = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from charrnn.config import ModelConfig
        from charrnn.data.vocab import Vocab
        from charrnn.generation.kernel_model import KernelModel
        arrays = dict(np.load({str(tmp_path / "weights.npz")!r}))
        config = ModelConfig(vocab_size={len(VOCAB)}, embedding_size=10, hidden_size=24, num_layers=2)
        model = KernelModel(arrays, config, Vocab.from_text({"".join(VOCAB.chars)!r}), lambda batch: "int8")
        for text in model.generate(["abc", "k"], length=60, seed=7, num_samples=2):
            print(repr(text))
        assert "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = reference.generate(["abc", "k"], length=60, seed=7, num_samples=2)
    assert result.stdout.splitlines() == [repr(text) for text in expected]

"""Property-based tests (hypothesis): for any input, the vocabulary round-trips, sampling settings are
accepted or refused with a CharRNNError, and config loading gives a config or a CharRNNError — never
another exception, never a silently different value."""

import dataclasses
import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from charrnn.config import ModelConfig, TrainConfig, from_dict
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.generation.sampling import check_sampling, probabilities, sample

# Any code point but lone surrogates (which no text file can hold).
chars = st.characters(blacklist_categories=("Cs",))
texts = st.text(chars, min_size=1, max_size=200)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(texts)
def test_vocabulary_round_trips_any_text(tmp_path_factory, text):
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == vocab.dtype and vocab.decode(ids) == text
    path = tmp_path_factory.mktemp("v") / "vocab.json"
    vocab.save(path)
    assert Vocab.load(path) == vocab


@FAST
@given(texts, texts)
def test_unknown_characters_are_refused_or_dropped(seen, other):
    vocab = Vocab.from_text(seen)
    missing = set(other) - set(seen)
    kept = "".join(c for c in other if c in set(seen))
    assert vocab.decode(vocab.encode(other, drop_unknown=True)) == kept
    if missing:
        try:
            vocab.encode(other)
            raise AssertionError("unknown characters were accepted")
        except CharRNNError as exc:
            assert "never saw" in str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


@FAST
@given(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
)
def test_sampling_settings_are_valid_or_refused(temperature, top_k, top_p):
    try:
        check_sampling(temperature, top_k, top_p)
    except CharRNNError:
        return
    # Accepted: real numbers in range, and no booleans pretending to be numbers.
    assert not any(isinstance(v, bool) for v in (temperature, top_k, top_p))
    assert math.isfinite(temperature) and temperature >= 0 and top_k >= 0 and 0 < top_p <= 1
    logits = np.random.default_rng(0).normal(size=(3, 7)) * 3
    probs = probabilities(logits, temperature, top_k, top_p)
    assert np.allclose(probs.sum(axis=1), 1) and (probs >= 0).all()
    ids = sample(logits, np.random.default_rng(1), temperature, top_k, top_p)
    assert (probs[np.arange(3), ids] > 0).all()  # never a character the settings removed


@FAST
@given(
    st.dictionaries(
        st.sampled_from([f.name for f in TrainConfig.__dataclass_fields__.values()] + ["hiden_size"]),
        json_values,
        max_size=4,
    )
)
def test_train_config_from_any_json_is_a_config_or_one_error(data):
    try:
        config = from_dict(TrainConfig, data, "train")
    except CharRNNError:
        return
    kinds = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for key, value in data.items():
        if kinds[key] in ("int", "float"):
            assert not isinstance(value, bool), (key, value)  # a JSON true is not the number 1
        assert getattr(config, key) == value and type(getattr(config, key)).__name__ == kinds[key]


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["embedding_size", "hidden_size", "num_layers", "cell", "dropout", "vocab_size"]),
        json_values,
        max_size=4,
    )
)
def test_model_config_from_any_json_is_a_config_or_one_error(data):
    assume("vocab_size" in data)
    try:
        config = from_dict(ModelConfig, data, "model")
    except CharRNNError:
        return
    assert isinstance(config.vocab_size, int) and not isinstance(config.vocab_size, bool) and config.vocab_size >= 1
    assert config.cell in ("gru", "lstm", "rnn") and 0 <= config.dropout < 1


block_settings = st.tuples(
    st.integers(1, 4),
    st.integers(0, 2**32),
    st.sampled_from([0.0, 1.0, 0.7, 1.3, 1e-250]),
    st.sampled_from([0, 0, 3]),
    st.sampled_from([1.0, 1.0, 0.9]),
)


@FAST
@given(st.lists(block_settings, min_size=1, max_size=6), st.integers(2, 70), st.integers(0, 2**32))
def test_sampling_many_blocks_at_once_equals_sampling_each_alone(blocks, vocab, seed):
    """The server samples all requests' rows in one call; each request must get what it gets alone."""
    from charrnn.generation.sampling import sample_rows

    rows = sum(block[0] for block in blocks)
    logits = (np.random.default_rng(seed).standard_normal((rows, vocab)) * 4).astype(np.float32)
    together = sample_rows(logits, [(n, np.random.default_rng(s), t, k, p) for n, s, t, k, p in blocks])
    start = 0
    for n, s, t, k, p in blocks:
        alone = sample(logits[start : start + n], np.random.default_rng(s), t, k, p)
        assert together[start : start + n].tolist() == alone.tolist()
        start += n

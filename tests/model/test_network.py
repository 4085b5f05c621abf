import math

import numpy as np
import pytest
import torch

from charrnn import CharRNNError, ModelConfig
from charrnn.generation.sampling import check_sampling, probabilities, sample
from charrnn.model.network import CharRNN
from charrnn.model.summary import count_parameters, summary


def test_tutorial_parameter_counts():
    model = CharRNN(ModelConfig(vocab_size=65))
    assert count_parameters(model.embedding) == 16_640
    assert count_parameters(model.rnn) == 3_938_304
    assert count_parameters(model.dense) == 66_625
    assert count_parameters(model) == 4_021_569
    table = summary(model)
    for figure in ("16,640", "3,938,304", "66,625", "Total params: 4,021,569"):
        assert figure in table


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_carried_state_matches_whole_sequence(cell, layers):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, embedding_size=8, hidden_size=16, num_layers=layers, cell=cell)).eval()
    ids = torch.randint(0, 11, (3, 9))
    whole, state = model(ids)
    assert whole.shape == (3, 9, 11)
    assert state.shape == ((2 if cell == "lstm" else 1) * layers, 3, 16)
    state, pieces = None, []
    for t in range(9):  # one character at a time, carrying the state, as generation does
        logits, state = model(ids[:, t : t + 1], state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-5, atol=1e-5)


def test_overfitting_one_batch_drives_loss_down():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=20, embedding_size=16, hidden_size=64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 20, (4, 31))
    losses = []
    for _ in range(150):
        logits, _ = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(20), abs=0.3)
    assert losses[-1] < 0.1 * losses[0]


def test_bad_model_config_is_an_error():
    with pytest.raises(CharRNNError, match="cell must be one of"):
        ModelConfig(vocab_size=5, cell="transformer")
    with pytest.raises(CharRNNError, match="hidden_size must be a positive integer"):
        ModelConfig(vocab_size=5, hidden_size=0)
    with pytest.raises(CharRNNError, match="dropout"):
        ModelConfig(vocab_size=5, dropout=1.5)


LOGITS = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))


def test_temperature_zero_is_greedy():
    rng = np.random.default_rng(0)
    logits = np.array([[0.1, 2.0, 1.9], [3.0, 0.0, 3.0]])
    assert sample(logits, rng, temperature=0).tolist() == [1, 0]


def test_sampling_follows_the_distribution():
    rng = np.random.default_rng(0)
    draws = sample(np.repeat(LOGITS, 40_000, axis=0), rng)
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.01)


def test_temperature_sharpens_and_flattens():
    cold, hot = probabilities(LOGITS, temperature=0.5), probabilities(LOGITS, temperature=2.0)
    assert cold[0, 0] > 0.5 > hot[0, 0]
    np.testing.assert_allclose(cold.sum(), 1.0)


def test_top_k_and_top_p_restrict_support():
    np.testing.assert_allclose(probabilities(LOGITS, top_k=2), [[0.5 / 0.8, 0.3 / 0.8, 0, 0]])
    np.testing.assert_allclose(probabilities(LOGITS, top_p=0.75), [[0.5 / 0.8, 0.3 / 0.8, 0, 0]])
    np.testing.assert_allclose(probabilities(LOGITS, top_p=0.81), [[0.5, 0.3, 0.15, 0]] / np.float64(0.95))
    np.testing.assert_allclose(probabilities(LOGITS, top_p=0.1), [[1, 0, 0, 0]])
    rng = np.random.default_rng(1)
    assert set(sample(np.repeat(LOGITS, 500, 0), rng, top_k=2).tolist()) == {0, 1}


def test_same_seed_same_draws():
    logits = np.random.default_rng(5).normal(size=(8, 30))
    a = sample(logits, np.random.default_rng(7))
    b = sample(logits, np.random.default_rng(7))
    assert (a == b).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature must be a non-negative"),
        (dict(temperature=float("nan")), "temperature must be a non-negative"),
        (dict(top_k=-2), "top_k must be a non-negative integer"),
        (dict(top_k=1.5), "top_k must be a non-negative integer"),
        (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
        (dict(top_p=1.2), r"top_p must be a number in \(0, 1\]"),
    ],
)
def test_bad_sampling_settings_say_what_to_do(kwargs, message):
    with pytest.raises(CharRNNError, match=message):
        check_sampling(**kwargs)

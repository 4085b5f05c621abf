"""Stateful training, regularisation, weight averaging and the three evaluation protocols."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import charrnn
from charrnn import TrainConfig, Trainer
from charrnn.config import ModelConfig, from_dict
from charrnn.data.batches import Streams
from charrnn.errors import CharRNNError
from charrnn.model.network import CharRNN
from charrnn.model.scoring import Protocols, evaluate, evaluate_loss, stateful_loss, window_starts, windows_loss
from charrnn.training.optimizer import WeightAverage
from charrnn.training.presets import preset

QUIET = open(os.devnull, "w")
VOCAB = 20


def tiny_model(**fields) -> CharRNN:
    torch.manual_seed(0)
    config = dict(vocab_size=VOCAB, embedding_size=8, hidden_size=16, num_layers=2)
    return CharRNN(ModelConfig(**{**config, **fields}))


def random_ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int64)


# -- stateful batches ---------------------------------------------------------------------------------
def test_stateful_batches_continue_each_stream_exactly():
    ids = np.arange(10_007, dtype=np.int64)  # each id is its own position
    streams = Streams(ids, batch_size=7, seq_len=13, seed=4)
    for epoch in range(3):
        batches = list(streams.epoch(epoch))
        assert len(batches) == len(streams) > 0
        first_inputs = batches[0][0][:, 0].numpy()
        assert np.array_equal(first_inputs, streams.starts(epoch))
        assert 0 <= streams.offset(epoch) < 13
        for (x, y), (next_x, _) in zip(batches, batches[1:]):
            assert torch.equal(y, x + 1)  # targets are the next characters
            assert torch.equal(next_x[:, 0], x[:, -1] + 1)  # row b carries on where it stopped
        last = batches[-1][1].max().item()
        assert last < len(ids)
        # the streams do not overlap: stream b ends before stream b + 1 starts
        assert (batches[-1][1][:-1, -1] < batches[0][0][1:, 0]).all()
    assert streams.offset(0) == Streams(ids, 7, 13, seed=4).offset(0)  # a pure function of (seed, epoch)
    resumed = list(streams.epoch(1, start=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, list(streams.epoch(1))[2:]))


def test_stateful_batches_refuse_a_text_too_short():
    with pytest.raises(CharRNNError, match="too short"):
        Streams(np.arange(100), batch_size=8, seq_len=20)


# -- weight drop --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [3, 12])
def test_weight_drop_through_the_fast_gru_matches_a_masked_reference(steps):
    # 4 x 3 tokens use the direct input projection; 8 x 12 = 96 >= 4 x vocab fold the embedding into a table
    batch = 4 if steps == 3 else 8
    p = 0.5
    model = tiny_model(weight_drop=p).train()
    model.compute_dtype = torch.float32
    ids = torch.from_numpy(random_ids(batch * steps).reshape(batch, steps))
    assert model.folds_embedding(batch * steps) == (steps == 12)

    torch.manual_seed(7)
    logits, state = model(ids)  # fast CPU GRU path
    logits.square().mean().backward()
    fast = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()

    torch.manual_seed(7)  # the same masks, drawn in the same order as forward draws them
    masks = [model.rnn.weight_hh_l0.new_empty(48, 16).bernoulli_(1 - p).div_(1 - p) for _ in range(2)]
    assert 0 < (masks[0] == 0).float().mean() < 1
    dropped = {f"weight_hh_l{k}": getattr(model.rnn, f"weight_hh_l{k}") * masks[k] for k in range(2)}
    y, h = torch.func.functional_call(model.rnn, dropped, (model.embedding(ids),))
    reference = model.dense(y)
    reference.square().mean().backward()
    assert torch.allclose(logits, reference, atol=1e-5)
    assert torch.allclose(state, h, atol=1e-5)
    for name, q in model.named_parameters():
        assert torch.allclose(fast[name], q.grad, atol=1e-5), name


def test_weight_drop_and_embedding_dropout_are_training_only():
    plain, regularised = tiny_model(), tiny_model(weight_drop=0.5, embedding_dropout=0.5)
    regularised.load_state_dict(plain.state_dict())
    ids = torch.from_numpy(random_ids(40).reshape(2, 20))
    with torch.no_grad():
        assert torch.equal(plain.eval()(ids)[0], regularised.eval()(ids)[0])
        regularised.train()
        assert not torch.allclose(regularised(ids)[0], regularised(ids)[0])  # a new mask each batch
    for cell in ("lstm", "rnn"):  # the nn.RNN path takes the masked weights through functional_call
        model = tiny_model(cell=cell, weight_drop=0.5).train()
        logits, _ = model(ids)
        logits.sum().backward()
        assert model.rnn.weight_hh_l0.grad is not None
        with torch.no_grad():
            assert torch.equal(model.eval()(ids)[0], model(ids)[0])


@pytest.mark.parametrize("batch", [1, 8])  # 1 x 30 tokens: direct embedding; 8 x 30 folds it into a table
def test_embedding_dropout_drops_whole_characters(batch):
    p = 0.5
    model = tiny_model(embedding_dropout=p).train()
    torch.manual_seed(3)
    weights = model._embedding_weights()
    kept = weights.abs().sum(1) > 0
    assert 0 < kept.sum() < VOCAB
    assert torch.allclose(weights[kept], model.embedding.weight[kept] / (1 - p))
    ids = torch.from_numpy(random_ids(batch * 30).reshape(batch, 30))
    torch.manual_seed(3)  # forward draws the embedding mask first
    model(ids)[0].sum().backward()
    grad = model.embedding.weight.grad
    seen = torch.zeros(VOCAB, dtype=torch.bool)
    seen[ids.flatten()] = True
    assert (grad[~kept].abs().sum(1) == 0).all()  # a dropped character learns nothing this batch
    assert (grad[kept & seen].abs().sum(1) > 0).all()


# -- the protocols ------------------------------------------------------------------------------------
def test_windows_protocol_is_nanogpts_estimate_loss():
    model, ids = tiny_model().eval(), random_ids(500)
    starts = window_starts(len(ids), 10, 32)
    assert np.array_equal(starts, window_starts(len(ids), 10, 32))  # fixed seed
    losses = []
    with torch.no_grad():
        for i in starts:
            x = torch.from_numpy(ids[i : i + 32])[None]
            y = torch.from_numpy(ids[i + 1 : i + 33])
            losses.append(F.cross_entropy(model(x)[0][0], y).item())
    assert windows_loss(model, ids, count=10, window=32, batch_size=3) == pytest.approx(np.mean(losses), rel=1e-5)


def test_stateful_protocol_streams_the_text_once():
    model, ids = tiny_model().eval(), random_ids(300)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids[:-1])[None])
        direct = F.cross_entropy(logits[0], torch.from_numpy(ids[1:])).item()
    assert stateful_loss(model, ids, streams=1, time_block=64) == pytest.approx(direct, rel=1e-5)
    # Pieces primed on everything before them score exactly what one pass does.
    assert stateful_loss(model, ids, streams=5, warmup=300, time_block=64) == pytest.approx(direct, rel=1e-5)
    chunks = evaluate(model, ids, "chunks", Protocols(seq_len=20))
    assert chunks == evaluate_loss(model, ids, 20, 64)
    with pytest.raises(CharRNNError, match="protocol"):
        evaluate(model, ids, "nanogpt")


# -- the weight average -------------------------------------------------------------------------------
def test_weight_average_follows_the_formula():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    expected = 0.0
    for t, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
        decay = min(0.9, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * value
    assert average.module.weight.item() == pytest.approx(expected)


def _config(small_text, **fields) -> TrainConfig:
    base = dict(
        text=str(small_text),
        batch_size=8,
        seq_len=40,
        seed=5,
        precision="fp32",
        checkpoint_every=3,
        log_every=1,
        tensorboard="off",
        stateful=True,
        ema=0.9,
        weight_decay=0.1,
        val_protocol="stateful",
    )
    return TrainConfig(**{**base, **fields})


MODEL = dict(embedding_size=16, hidden_size=32, num_layers=2, dropout=0.2, weight_drop=0.3, embedding_dropout=0.1)


def test_saved_weights_are_the_average_and_load_uses_them(small_text, tmp_path):
    trainer = Trainer.create(tmp_path / "run", _config(small_text, epochs=1), MODEL, out=QUIET)
    trainer.fit()
    best = load_file(str(tmp_path / "run" / "best.safetensors"))
    average = trainer.average.module.state_dict()
    assert all(torch.equal(best[k], average[k]) for k in best)
    assert not torch.equal(best["rnn.weight_hh_l0"], trainer.model.rnn.weight_hh_l0.detach())
    loaded = charrnn.load(tmp_path / "run")
    assert all(torch.equal(v, best[k]) for k, v in loaded.model.state_dict().items())
    assert loaded.generate("Th", length=20, seed=1)[0].startswith("Th")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["stateful"] and config["train"]["ema"] == 0.9 and config["model"]["weight_drop"] == 0.3
    epoch = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["val_protocol"] == "stateful" and set(epoch["val_losses"]) == {"stateful"}


def test_stateful_run_resumes_bit_identically(small_text, tmp_path):
    whole = Trainer.create(tmp_path / "whole", _config(small_text, max_steps=8), MODEL, out=QUIET)
    whole.fit()
    part = Trainer.create(tmp_path / "part", _config(small_text, max_steps=5), MODEL, out=QUIET)
    part.fit()
    resumed = Trainer.resume(tmp_path / "part", max_steps=8, out=QUIET)
    assert resumed.carried is not None and torch.equal(resumed.carried, part.carried)
    resumed.fit()
    for name in ("latest.safetensors", "best.safetensors"):
        got, want = load_file(str(tmp_path / "part" / name)), load_file(str(tmp_path / "whole" / name))
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert torch.equal(resumed.carried, whole.carried)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), whole.model.parameters()))


def test_a_damaged_carried_state_is_one_line(small_text, tmp_path):
    trainer = Trainer.create(tmp_path / "run", _config(small_text, max_steps=2), MODEL, out=QUIET)
    trainer.fit()
    path = tmp_path / "run" / "trainer_state.pt"
    state = torch.load(path, weights_only=True)
    state["carried"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(CharRNNError, match="carried recurrent state"):
        Trainer.resume(tmp_path / "run", out=QUIET)


# -- configuration ------------------------------------------------------------------------------------
def test_new_settings_round_trip_and_old_configs_still_load():
    config = TrainConfig(stateful=True, weight_decay=0.05, ema=0.999, val_protocol="windows", val_also="all")
    assert from_dict(TrainConfig, dataclasses.asdict(config), "train") == config
    old = {
        k: v
        for k, v in dataclasses.asdict(TrainConfig()).items()
        if k not in ("stateful", "weight_decay", "ema", "val_protocol", "val_also", "eval_windows", "eval_window_len")
    }
    assert from_dict(TrainConfig, old, "train") == TrainConfig()
    assert from_dict(ModelConfig, {"vocab_size": 5, "dropout": 0.1}, "model").weight_drop == 0.0
    for bad in (dict(val_protocol="nano"), dict(val_also="chunks,nano"), dict(ema=1.0), dict(weight_decay=-1.0)):
        with pytest.raises(CharRNNError):
            TrainConfig(**bad)
    with pytest.raises(CharRNNError, match="weight_drop"):
        ModelConfig(vocab_size=5, weight_drop=1.0)
    assert "stateful" not in preset("tutorial")[1]  # the tutorial keeps reset-per-sequence training

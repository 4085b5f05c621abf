import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import charrnn
from charrnn import Callback, CharRNNError, TrainConfig, Trainer
from charrnn.generation.sampling import sample
from charrnn.model.weights import load_trainer_state
from conftest import TINY

QUIET = dict(out=open(os.devnull, "w"))


def test_run_directory_is_complete(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "config.json",
        "vocab.json",
        "latest.safetensors",
        "best.safetensors",
        "trainer_state.pt",
        "metrics.jsonl",
        "loss.png",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["format_version"] == 3 and config["model"]["hidden_size"] == 32
    lines = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[1]["val_loss"] < epochs[0]["val_loss"]
    assert any(r["kind"] == "step" for r in lines)
    assert (tiny_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = load_trainer_state(tiny_run / "trainer_state.pt")  # weights_only=True inside
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0


def test_save_load_gives_identical_logits_and_text(tiny_run):
    model = charrnn.load(tiny_run, checkpoint="latest")
    again = charrnn.load(tiny_run, checkpoint="latest")
    trainer_weights = load_trainer_state(tiny_run / "trainer_state.pt")["model"]
    ids = torch.randint(0, len(model.vocab), (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model.model(ids)[0], again.model(ids)[0], rtol=0, atol=0)
    for name, tensor in load_file(str(tiny_run / "latest.safetensors")).items():
        assert torch.equal(tensor, trainer_weights[name])
    text = model.generate("ROMEO:", length=200, seed=11)
    assert text == again.generate("ROMEO:", length=200, seed=11)
    assert text != model.generate("ROMEO:", length=200, seed=12)
    assert text[0].startswith("ROMEO:") and len(text[0]) == 206


def test_generation_matches_a_straightforward_loop(tiny_run):
    """The batched, state-carrying generator equals re-running the whole text each step."""
    model = charrnn.load(tiny_run)
    fast = model.generate("To be", length=40, temperature=0.7, top_k=10, seed=5)[0]
    rng, text = np.random.default_rng(5), "To be"
    with torch.no_grad():
        for _ in range(40):
            ids = torch.from_numpy(model.vocab.encode(text).astype(np.int64))[None]
            logits = model.model(ids)[0][:, -1].numpy()
            text += model.vocab.chars[sample(logits, rng, temperature=0.7, top_k=10)[0]]
    assert fast == text


def test_batches_of_samples_and_prompts(tiny_run):
    model = charrnn.load(tiny_run)
    out = model.generate(["ROMEO:", "JULIET:\n"], length=30, num_samples=3, seed=1)
    assert (
        len(out) == 6
        and all(o.startswith("ROMEO:") for o in out[:3])
        and all(o.startswith("JULIET:\n") for o in out[3:])
    )
    assert len(set(out[:3])) > 1  # the samples differ
    pieces = list(model.stream(["ROMEO:", "JULIET:\n"], length=30, num_samples=3, seed=1))
    assert pieces[0] == ["ROMEO:"] * 3 + ["JULIET:\n"] * 3 and len(pieces) == 31
    assert ["".join(col) for col in zip(*pieces)] == out
    greedy = model.generate("A", length=20, temperature=0, num_samples=2)
    assert greedy[0] == greedy[1]


def test_prompts_empty_unknown_and_bad_arguments(tiny_run):
    model = charrnn.load(tiny_run)
    text = model.generate("", length=25, seed=0)[0]
    assert len(text) == 25
    with pytest.raises(CharRNNError, match=r"never saw: '€'.*drop"):
        model.generate("Hello €", length=5)
    assert model.generate("Hel€lo", length=5, seed=0, drop_unknown=True)[0].startswith("Hello")
    with pytest.raises(CharRNNError, match="num_samples must be a positive integer"):
        model.generate("A", num_samples=0)
    with pytest.raises(CharRNNError, match="length must be"):
        model.generate("A", length=-1)
    with pytest.raises(CharRNNError, match="temperature"):
        model.generate("A", temperature=-0.5)


def test_evaluate_reports_loss_and_bits(tiny_run, small_text):
    model = charrnn.load(tiny_run)
    result = model.evaluate(small_text.read_text())
    assert result["bits_per_char"] == pytest.approx(result["loss"] / np.log(2))
    assert 1.0 < result["loss"] < np.log(len(model.vocab))


def _config(small_text, **kw):
    return TrainConfig(text=str(small_text), epochs=2, batch_size=16, seq_len=40, seed=7, checkpoint_every=5, **kw)


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, loss):
        if trainer.global_step == self.step:
            trainer.request_stop()  # what Ctrl-C does


def test_resume_after_interruption_gives_identical_weights(small_text, tmp_path):
    model = dict(TINY, dropout=0.2, num_layers=2)  # dropout: the RNG state must be restored too
    whole = Trainer.create(tmp_path / "whole", _config(small_text), model, **QUIET)
    assert whole.fit().status == "finished"
    steps_per_epoch = len(whole.batches)

    part = Trainer.create(
        tmp_path / "part", _config(small_text), model, callbacks=[StopAt(steps_per_epoch + 3)], **QUIET
    )
    result = part.fit()
    assert result.status == "interrupted" and result.global_step == steps_per_epoch + 3
    resumed = Trainer.resume(tmp_path / "part", **QUIET)
    assert (resumed.epoch, resumed.step_in_epoch) == (1, 3)
    assert resumed.fit().status == "finished"
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    timing = ("seconds", "ms_per_step", "elapsed")  # wall-clock figures differ from run to run

    def metrics(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines]

    assert metrics("part") == metrics("whole")


def test_resume_refuses_changed_settings_and_extends_epochs(small_text, tmp_path):
    Trainer.create(tmp_path / "r", _config(small_text, max_steps=4), TINY, **QUIET).fit()
    with pytest.raises(CharRNNError, match="cannot change lr"):
        Trainer.resume(tmp_path / "r", lr=0.5)
    trainer = Trainer.resume(tmp_path / "r", max_steps=0, epochs=1, **QUIET)
    assert trainer.fit().status == "finished" and trainer.epoch == 1
    with pytest.raises(CharRNNError, match="already holds a run"):
        Trainer.create(tmp_path / "r", _config(small_text), TINY)


def test_patience_stops_early(small_text, tmp_path):
    trainer = Trainer.create(
        tmp_path / "p", dataclasses.replace(_config(small_text, patience=2), epochs=10), TINY, **QUIET
    )
    losses = iter([2.0, 1.9, 1.95, 1.91, 1.92, 1.5])  # best at epoch 2, then two epochs without improving
    trainer.evaluate = lambda ids=None: next(losses)
    result = trainer.fit()
    assert result.status == "early_stopped" and result.epoch == 4 and result.best_val_loss == 1.9


def test_no_validation_split_reproduces_tutorial_and_uses_latest(small_text, tmp_path):
    trainer = Trainer.create(tmp_path / "nv", _config(small_text, val_fraction=0.0, max_steps=3), TINY, **QUIET)
    trainer.fit()
    assert not (tmp_path / "nv" / "best.safetensors").exists()
    assert len(charrnn.load(tmp_path / "nv").generate("A", length=5, seed=0)[0]) == 6
    with pytest.raises(CharRNNError, match="no best checkpoint"):
        charrnn.load(tmp_path / "nv", checkpoint="best")


def test_custom_loop_from_the_pieces(small_text, tmp_path):
    trainer = Trainer.create(tmp_path / "c", _config(small_text), TINY, **QUIET)
    before = trainer.evaluate()
    for inputs, targets in list(trainer.batches.epoch(0))[:10]:
        trainer.train_step(inputs, targets)
    assert trainer.evaluate() < before
    trainer.save_checkpoint()
    assert charrnn.load(tmp_path / "c", checkpoint="latest").generate("A", length=3, seed=0)

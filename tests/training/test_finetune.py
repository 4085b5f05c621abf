"""`charrnn train --init-from`: a new run from another run's (or an import's) weights; and
`generate --prompt-file`."""

import json
import os
from pathlib import Path

import torch

from conftest import TINY, run_cli
from helpers import assert_one_line_error

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tutorial"


def _weights(run: Path) -> dict:
    from charrnn.model.weights import load_run

    return load_run(run, "latest")[0].state_dict()


def test_finetune_keeps_ids_appends_new_characters_and_resumes(tiny_run, tmp_path):
    from charrnn import TrainConfig, Trainer, Vocab

    new_text = tmp_path / "new.txt"
    new_text.write_text("Über naïve façades, café tables #. " * 400, encoding="utf-8")
    source_vocab = Vocab.load(tiny_run / "vocab.json")
    config = TrainConfig(
        text=str(new_text), init_from=str(tiny_run), max_steps=4, batch_size=8, seq_len=40, seed=5, checkpoint_every=2
    )
    trainer = Trainer.create(tmp_path / "ft", config, {}, out=open(os.devnull, "w"))
    # Before any step: the source's weights in the source's rows, fresh rows for #, Ü, ï, ç, é.
    vocab = trainer.vocab
    assert vocab.chars[: len(source_vocab)] == source_vocab.chars
    assert set(vocab.chars[len(source_vocab) :]) == {"#", "Ü", "ï", "ç", "é"}
    start, source = trainer.model.state_dict(), _weights(tiny_run)
    for name, value in source.items():
        rows = value.shape[0]
        assert torch.equal(start[name][:rows].cpu(), value), name
    assert start["embedding.weight"].shape[0] == len(source_vocab) + 5
    fresh = start["embedding.weight"][len(source_vocab) :].clone()
    trainer.fit()

    run = tmp_path / "ft"
    config_file = json.loads((run / "config.json").read_text())
    source_config = json.loads((tiny_run / "config.json").read_text())
    assert config_file["started_from"]["run"] == str(tiny_run.absolute())
    assert config_file["started_from"]["corpus_sha256"] == source_config["corpus"]["sha256"]
    assert config_file["started_from"]["step"] > 0
    assert config_file["model"]["hidden_size"] == TINY["hidden_size"]
    assert json.loads((run / "vocab.json").read_text())["format_version"] == 2  # not sorted: source ids kept

    # The same seed gives the same fresh rows.
    again = Trainer.create(tmp_path / "ft2", config, {}, out=open(os.devnull, "w"))
    assert torch.equal(again.model.state_dict()["embedding.weight"][len(source_vocab) :], fresh)
    again.close()

    # Resume the fine-tuned run; then it generates and evaluates like any run.
    resumed = run_cli("train", "--resume", run, "--max-steps", "6")
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 6
    gen = run_cli("generate", run, "--prompt", "café", "--length", "30", "--seed", "1")
    assert gen.returncode == 0 and gen.stdout.startswith("café"), gen.stderr
    ev = run_cli("eval", run, "--text", new_text)
    assert ev.returncode == 0, ev.stderr


def test_finetune_from_an_imported_model(tmp_path):
    from charrnn import import_tutorial

    source = import_tutorial(
        FIXTURES / "keras3" / "tutorial.weights.h5", str(FIXTURES / "corpus.txt"), tmp_path / "imp"
    )
    text = tmp_path / "more.txt"
    text.write_text("Shall I compare thee to a winter's night? Zounds! " * 60, encoding="utf-8")
    result = run_cli(
        "train",
        "--init-from",
        source,
        "--text",
        text,
        "--run",
        tmp_path / "ft",
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--seq-len",
        "30",
    )
    assert result.returncode == 0, result.stderr
    assert f"starting from {source.absolute()}" in result.stderr and "new character(s)" in result.stderr
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["model"]["embedding_size"] == 8 and config["model"]["hidden_size"] == 16


def test_finetune_errors_are_one_line(tiny_run, small_text, tmp_path):
    clash = run_cli("train", "--init-from", tiny_run, "--text", small_text, "--run", tmp_path / "a", "--hidden", "64")
    assert_one_line_error(clash, "--init-from takes the model's shape", "--hidden 64 (the source has 32)")
    assert not (tmp_path / "a").exists()
    missing = run_cli("train", "--init-from", tmp_path / "nowhere", "--text", small_text, "--run", tmp_path / "b")
    assert_one_line_error(missing, "is not a charrnn run")


def test_prompt_file_and_stdin(tiny_run, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:\nI will " * 200, encoding="utf-8")  # a long prompt
    args = ["--length", "40", "--temperature", "0"]
    from_file = run_cli("generate", tiny_run, "--prompt-file", prompt, *args)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.startswith(prompt.read_text()) and len(from_file.stdout) == len(prompt.read_text()) + 41
    import subprocess
    import sys

    from_stdin = subprocess.run(
        [sys.executable, "-m", "charrnn", "generate", str(tiny_run), "--prompt-file", "-", *args],
        input=prompt.read_text(),
        capture_output=True,
        text=True,
    )
    assert from_stdin.stdout == from_file.stdout
    assert_one_line_error(run_cli("generate", tiny_run, "--prompt", "A", "--prompt-file", prompt), "not both")
    assert_one_line_error(
        run_cli("generate", tiny_run, "--prompt-file", tmp_path / "none.txt"), "cannot read --prompt-file"
    )
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    assert_one_line_error(run_cli("generate", tiny_run, "--prompt-file", latin1), "not UTF-8")


def test_extended_vocabulary_encodes_and_round_trips(tmp_path):
    from charrnn import CharRNNError, Vocab

    vocab = Vocab.from_text("banana").extend(Vocab.from_text("cab #"))  # a, b, n, then " ", "#", "c"
    assert vocab.chars == ("a", "b", "n", " ", "#", "c") and not vocab.is_sorted
    assert vocab.encode("cab #n").tolist() == [5, 0, 1, 3, 4, 2]
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == vocab
    (tmp_path / "v1.json").write_text('{"format_version": 1, "chars": ["b", "a"]}')
    import pytest

    with pytest.raises(CharRNNError, match="must be sorted"):
        Vocab.load(tmp_path / "v1.json")

"""`charrnn import`: the tutorial's models, saved by real TensorFlow (tests/fixtures/tutorial, made by
make_fixtures.py there), become runs whose logits and greedy text match TensorFlow's. No TensorFlow here."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from helpers import assert_one_line_error

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tutorial"
CORPUS = FIXTURES / "corpus.txt"
KERAS3 = FIXTURES / "keras3" / "tutorial.weights.h5"
CHECKPOINTS = FIXTURES / "keras2" / "training_checkpoints"
SOURCES = {"keras3": KERAS3, "keras2": CHECKPOINTS / "ckpt_2"}


def expected(flavour: str) -> dict:
    return json.loads((FIXTURES / flavour / "expected.json").read_text())


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    from charrnn import import_tutorial

    root = tmp_path_factory.mktemp("imported")
    return {flavour: import_tutorial(source, str(CORPUS), root / flavour) for flavour, source in SOURCES.items()}


@pytest.mark.parametrize("flavour", ["keras3", "keras2"])
def test_logits_and_greedy_text_match_tensorflow(imported, flavour):
    from charrnn import load

    want = expected(flavour)
    model = load(imported[flavour], precision="fp32")  # TensorFlow computed in fp32
    assert (model.model.config.embedding_size, model.model.config.hidden_size) == (want["embedding"], want["units"])
    ids = torch.from_numpy(model.vocab.encode(want["logits_input"]).astype(np.int64))[None]  # (1, time)
    with torch.no_grad():
        logits, _ = model.model(ids)  # (1, time, vocab)
    tf_logits = np.array(want["logits"])  # (time, vocab + 1): column 0 is [UNK]
    # [UNK] handling: its row is dropped, so charrnn's id i is TensorFlow's id i + 1.
    assert logits.shape[-1] == tf_logits.shape[-1] - 1 == want["vocab_size"] - 1
    assert np.abs(logits[0].numpy() - tf_logits[:, 1:]).max() <= 1e-4
    text = model.generate(want["prompt"], length=want["length"], temperature=0)[0]
    assert text == want["greedy"]


def test_an_imported_run_serves_the_same_text(imported):
    """An imported run is a run like any other: the server gives what charrnn.load gives."""
    from fastapi.testclient import TestClient

    from charrnn import load
    from charrnn.serving.app import create_app

    model = load(imported["keras2"])
    with TestClient(create_app(model)) as client:
        answer = client.post("/v1/generate", json={"prompt": "Thou", "length": 60, "seed": 5, "temperature": 0.8})
    assert answer.status_code == 200
    assert answer.json()["samples"] == model.generate("Thou", length=60, seed=5, temperature=0.8)


def test_unk_is_dropped_and_never_produced(imported):
    from charrnn import load

    model = load(imported["keras3"])
    assert list(model.vocab.chars) == sorted(set(CORPUS.read_text(encoding="utf-8")))  # no "[UNK]" entry
    sample = model.generate("Thou", length=400, temperature=1.5, seed=3)[0]
    assert set(sample) <= set(model.vocab.chars)


def test_directory_takes_the_latest_checkpoint(tmp_path):
    from charrnn.convert.keras import find_model

    assert find_model(CHECKPOINTS) == ("tf", CHECKPOINTS / "ckpt_2")  # as its `checkpoint` file says
    assert find_model(CHECKPOINTS / "ckpt_1.index") == ("tf", CHECKPOINTS / "ckpt_1")
    assert find_model(KERAS3.parent) == ("h5", KERAS3)


def test_checkpoint_reader_checks_its_checksums(tmp_path):
    from charrnn.convert.tfcheckpoint import BadCheckpoint, crc32c, read_checkpoint

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data = os.urandom(4096 * 70 + 13)  # long enough for the lane-parallel path
    from charrnn.convert.tfcheckpoint import _crc_register

    assert crc32c(data) == _crc_register(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    tensors = read_checkpoint(CHECKPOINTS / "ckpt_2")
    assert tensors["gru/cell/recurrent_kernel/.ATTRIBUTES/VARIABLE_VALUE"].shape == (16, 48)
    for name in ("ckpt_2.index", "ckpt_2.data-00000-of-00001"):
        shutil.copy(CHECKPOINTS / name, tmp_path / name)
    damaged = bytearray((tmp_path / "ckpt_2.data-00000-of-00001").read_bytes())
    damaged[100] ^= 0xFF
    (tmp_path / "ckpt_2.data-00000-of-00001").write_bytes(bytes(damaged))
    with pytest.raises(BadCheckpoint, match="checksum"):
        read_checkpoint(tmp_path / "ckpt_2")


def test_import_cli_then_generate_eval_export(tmp_path):
    run = tmp_path / "run"
    result = run_cli("import", CHECKPOINTS, "--text", CORPUS, "--run", run)
    assert result.returncode == 0, result.stderr
    assert "[UNK] entry dropped" in result.stdout and f"charrnn generate {run}" in result.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["started_from"]["format"] == "tf-checkpoint" and config["model"]["hidden_size"] == 16
    gen = run_cli("generate", run, "--prompt", "And summer", "--length", "60", "--temperature", "0")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout == expected("keras2")["greedy"] + "\n"
    ev = run_cli("eval", run, "--text", CORPUS)
    assert ev.returncode == 0 and "bits/char" in ev.stdout, ev.stderr
    exp = run_cli("export", run, "--out", tmp_path / "onnx")
    assert exp.returncode == 0, exp.stderr
    from_onnx = run_cli("generate", tmp_path / "onnx", "--prompt", "And summer", "--length", "60", "--temperature", "0")
    assert from_onnx.stdout == gen.stdout
    again = run_cli("import", KERAS3, "--text", CORPUS, "--run", run)
    assert_one_line_error(again, "already holds a run")
    resume = run_cli("train", "--resume", run, "--epochs", "1")
    assert_one_line_error(resume, "imported model", "--init-from")


def test_bad_inputs_are_one_line(tmp_path):
    not_model = tmp_path / "notes.weights.h5"
    not_model.write_text("hello")
    assert_one_line_error(
        run_cli("import", not_model, "--text", CORPUS, "--run", tmp_path / "a"), "not a readable HDF5 file"
    )
    fake = tmp_path / "ckpt_3"
    (tmp_path / "ckpt_3.index").write_bytes(b"\0" * 100)
    assert_one_line_error(
        run_cli("import", fake, "--text", CORPUS, "--run", tmp_path / "b"), "not a TensorFlow checkpoint index"
    )
    other = tmp_path / "other.txt"
    other.write_text("abc abc abc\n")
    assert_one_line_error(
        run_cli("import", KERAS3, "--text", other, "--run", tmp_path / "c"),
        "5 distinct characters",
        "the model has 42",
        "the text it was trained on",
    )
    assert_one_line_error(
        run_cli("import", tmp_path / "missing", "--text", CORPUS, "--run", tmp_path / "d"), "does not exist"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(
        run_cli("import", empty, "--text", CORPUS, "--run", tmp_path / "e"), "holds no TensorFlow model"
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_missing_h5py_is_one_line(tmp_path):
    # h5py hidden from a fresh interpreter: the .weights.h5 reader says what to install.
    code = (
        "import sys; sys.modules['h5py'] = None; from charrnn.cli import main; "
        f"sys.exit(main(['import', {str(KERAS3)!r}, '--text', {str(CORPUS)!r}, '--run', {str(tmp_path / 'r')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_one_line_error(result, "needs h5py", "pip install 'charrnn[import]'")

"""Model files that parse but hold the wrong thing: a vocab.json swapped for another of the same size, and
weights with NaN or infinity in them (a diverged training). Each is one line naming the file, never text
in the wrong alphabet or a model that writes only newlines.

The CLI runs in-process (`cli.main`), which catches only CharRNNError: any other exception fails the test
with its traceback, so "one line, no traceback" is what passing means.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save_file as save_safetensors

from charrnn import cli
from conftest import run_cli
from helpers import assert_one_line_error

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tutorial"
CORPUS = FIXTURES / "corpus.txt"
KERAS3 = FIXTURES / "keras3" / "tutorial.weights.h5"
CHECKPOINTS = FIXTURES / "keras2" / "training_checkpoints"


def main(capsys, *args) -> tuple[int, str]:
    """`charrnn ARGS` in this process: (exit code, the one stderr line)."""
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def _swap_vocab(folder: Path, how: str) -> None:
    """Replace folder/vocab.json by another vocabulary of the same size."""
    path = folder / "vocab.json"
    chars = json.loads(path.read_text())["chars"]
    if how == "reordered":  # the same characters under other ids
        swapped = {"format_version": 2, "chars": chars[1:] + chars[:1]}
    else:  # one character replaced by another, still sorted
        unused = next(chr(p) for p in range(0x100, 0x200) if chr(p) not in chars)
        swapped = {"format_version": 1, "chars": sorted(chars[:-1] + [unused])}
    path.write_text(json.dumps(swapped))


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    from charrnn.export.onnx import export

    out = tmp_path_factory.mktemp("hostile-export") / "onnx"
    export(tiny_run, out)
    return out


# -- a vocab.json swapped for another of the same size ---------------------------------------------------
@pytest.mark.parametrize("how", ["reordered", "other characters"])
def test_a_swapped_run_vocabulary_is_one_line(how, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _swap_vocab(run, how)
    result = run_cli("generate", run, "--length", "20", "--seed", "1")
    assert_one_line_error(
        result, f"{run}/vocab.json", "not the vocabulary", "config.json", "restore the run's own vocab.json"
    )


def test_a_swapped_vocabulary_stops_export_and_init_from(tiny_run, small_text, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _swap_vocab(run, "other characters")
    code, line = main(capsys, "export", run, "--out", tmp_path / "onnx")
    assert code == 2 and "vocab.json is not the vocabulary" in line, line
    assert not (tmp_path / "onnx" / "export.json").exists()
    code, line = main(capsys, "train", "--init-from", run, "--text", small_text, "--run", tmp_path / "ft")
    assert code == 2 and "vocab.json is not the vocabulary" in line, line


def test_a_swapped_vocabulary_stops_resume_of_a_fine_tuned_run(tiny_run, small_text, tmp_path, capsys):
    """A fine-tuned run's vocabulary may be in any order, so only the recorded SHA-256 shows a reordering."""
    from charrnn import TrainConfig, Trainer

    config = TrainConfig(text=str(small_text), init_from=str(tiny_run), max_steps=1, batch_size=8, seq_len=40)
    Trainer.create(tmp_path / "ft", config, {}, out=open(os.devnull, "w")).close()
    _swap_vocab(tmp_path / "ft", "reordered")
    code, line = main(capsys, "train", "--resume", tmp_path / "ft")
    assert code == 2 and "vocab.json is not the vocabulary" in line, line


@pytest.mark.parametrize("how", ["reordered", "other characters"])
def test_a_swapped_export_vocabulary_is_one_line(how, tiny_export, tmp_path, capsys):
    out = tmp_path / "onnx"
    shutil.copytree(tiny_export, out)
    _swap_vocab(out, how)
    code, line = main(capsys, "generate", out, "--length", "5", "--seed", "1")
    assert code == 2 and f"{out}/vocab.json is not the vocabulary" in line and "export.json" in line, line
    assert "charrnn export" in line


def test_runs_and_exports_without_a_vocabulary_hash_still_load(tiny_run, tiny_export, tmp_path, capsys):
    """Written before the hash was recorded: config.json version 1, export.json without vocab_sha256."""
    run, out = tmp_path / "run", tmp_path / "onnx"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_export, out)
    config = json.loads((run / "config.json").read_text())
    assert config["format_version"] == 3 and len(config.pop("vocab_sha256")) == 64
    (run / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    meta = json.loads((out / "export.json").read_text())
    assert len(meta.pop("vocab_sha256")) == 64
    (out / "export.json").write_text(json.dumps(meta))
    for folder in (run, out):
        code, _ = main(capsys, "generate", folder, "--length", "5", "--seed", "1")
        assert code == 0


def test_a_version_2_config_needs_its_vocabulary_hash(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    del config["vocab_sha256"]
    (run / "config.json").write_text(json.dumps(config))
    code, line = main(capsys, "generate", run, "--length", "5")
    assert code == 2 and "config.json is damaged" in line and "vocab_sha256" in line, line


def test_an_imported_run_records_its_vocabulary_hash(tmp_path, capsys):
    run = tmp_path / "run"
    code, _ = main(capsys, "import", KERAS3, "--text", CORPUS, "--run", run)
    assert code == 0
    assert len(json.loads((run / "config.json").read_text())["vocab_sha256"]) == 64
    _swap_vocab(run, "reordered")
    code, line = main(capsys, "generate", run, "--length", "5")
    assert code == 2 and "vocab.json is not the vocabulary" in line, line


# -- NaN and infinite weights ----------------------------------------------------------------------------
def test_an_import_with_nan_weights_is_one_line(tmp_path):
    h5py = pytest.importorskip("h5py")
    damaged = tmp_path / "tutorial.weights.h5"
    shutil.copy(KERAS3, damaged)
    with h5py.File(damaged, "r+") as handle:
        names = []
        handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        kernel = next(n for n in names if "gru" in n and n.endswith("vars/1"))  # the recurrent kernel
        values = handle[kernel][()]
        values[0, 0] = np.nan
        handle[kernel][...] = values
    result = run_cli("import", damaged, "--text", CORPUS, "--run", tmp_path / "run")
    assert_one_line_error(result, str(damaged), kernel, "NaN or infinite")
    assert not (tmp_path / "run").exists()


def test_a_tf_checkpoint_with_infinite_weights_is_refused(tmp_path, monkeypatch):
    from charrnn.convert import keras
    from charrnn.errors import CharRNNError

    read = keras.read_checkpoint

    def with_infinity(prefix):
        arrays = read(prefix)
        name = next(n for n in arrays if n.startswith("dense/bias"))
        arrays[name] = np.full_like(arrays[name], np.inf)
        return arrays

    monkeypatch.setattr(keras, "read_checkpoint", with_infinity)
    with pytest.raises(CharRNNError, match=r"ckpt_2: weight dense/bias\S* holds NaN or infinite values"):
        keras.import_tutorial(CHECKPOINTS / "ckpt_2", str(CORPUS), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _nan_weights(run: Path, tensor: str) -> None:
    """A NaN in one tensor of both checkpoints, with a matching SHA-256: what a diverged training writes."""
    from charrnn.model.weights import tensors_sha256

    for name in ("best.safetensors", "latest.safetensors"):
        path = run / name
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(path)
        tensors[tensor][0] = float("nan")
        save_safetensors(tensors, path, metadata={**metadata, "tensors_sha256": tensors_sha256(tensors)})


def test_a_run_with_nan_weights_is_one_line(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _nan_weights(run, "rnn.weight_hh_l0")
    code, line = main(capsys, "generate", run, "--length", "5", "--seed", "1")
    assert code == 2 and "best.safetensors" in line and "rnn.weight_hh_l0" in line and "NaN" in line, line
    code, line = main(capsys, "export", run, "--out", tmp_path / "onnx")
    assert code == 2 and "rnn.weight_hh_l0" in line, line


def test_an_export_with_nan_weights_is_one_line(tiny_export, tmp_path, capsys):
    """An export whose model.onnx has a NaN initializer and a matching SHA-256 (written before export
    refused such weights) is refused when loaded."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from charrnn.storage.formats import file_sha256

    out = tmp_path / "onnx"
    shutil.copytree(tiny_export, out)
    graph = onnx.load(str(out / "model.onnx"))
    for index, init in enumerate(graph.graph.initializer):
        if init.name == "dense_weight":
            values = numpy_helper.to_array(init).copy()
            values[0, 0] = np.nan
            graph.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(graph, str(out / "model.onnx"))
    meta = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({**meta, "model_sha256": file_sha256(out / "model.onnx")}))
    code, line = main(capsys, "generate", out, "--length", "5", "--seed", "1")
    assert code == 2 and "model.onnx" in line and "dense_weight" in line and "NaN" in line, line
    assert "charrnn export" in line

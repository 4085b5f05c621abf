"""`charrnn.load(RUN)` and `charrnn generate RUN` without PyTorch: a GRU run on the CPU loads through the
numpy reader and generates on the step kernels, with the same checks, the same precision and the same
text as the PyTorch path; what needs PyTorch (evaluation) loads it on first use."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import charrnn
from charrnn.config import ModelConfig
from charrnn.errors import CharRNNError
from charrnn.generation import runs
from charrnn.generation.torch_model import CharModel
from charrnn.generation.torch_model import load as load_torch
from charrnn.kernels import build, native
from charrnn.model import arrays, memory
from charrnn.model.network import CharRNN
from charrnn.model.precision import precision_name
from charrnn.model.weights import tensors_sha256

# Makes any import of torch end the process with 97: nothing may even try, and fall back quietly.
BLOCK_TORCH = """
import os, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            sys.stderr.write(f"torch imported: {name}\\n"); sys.stderr.flush(); os._exit(97)
sys.meta_path.insert(0, Block())
from charrnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def kernels():
    if not build.available():
        pytest.skip("no C compiler here: the step kernels are unavailable")


def blocked(*args, **popen):
    command = [sys.executable, "-c", BLOCK_TORCH, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **popen)


# -- the one reader ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell, layers", [("gru", 1), ("gru", 3), ("lstm", 2), ("rnn", 1)])
def test_the_numpy_reader_knows_the_networks_tensors_and_their_digest(cell, layers):
    config = ModelConfig(vocab_size=11, embedding_size=5, hidden_size=7, num_layers=layers, cell=cell)
    state = CharRNN(config).state_dict()
    assert memory.tensor_shapes(config) == {name: tuple(t.shape) for name, t in state.items()}
    assert sum(np.prod(shape) for shape in memory.tensor_shapes(config).values()) == memory.parameter_count(config)
    mixed = {**state, "count": torch.tensor(3, dtype=torch.int64), "mask": torch.ones(2, 3, dtype=torch.uint8)}
    for tensors in (state, mixed):
        numpy = {name: t.numpy() for name, t in tensors.items()}
        assert arrays.arrays_sha256(numpy) == tensors_sha256(tensors)


def test_the_digest_is_the_one_weight_files_record(tiny_run):
    with safe_open(str(tiny_run / "best.safetensors"), framework="numpy") as handle:
        recorded = handle.metadata()["tensors_sha256"]
        values = {name: handle.get_tensor(name) for name in handle.keys()}
    assert arrays.arrays_sha256(values) == recorded


def _damage(run: Path, case: str) -> None:
    config, weights = json.loads((run / "config.json").read_text()), run / "best.safetensors"
    if case == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x40
        weights.write_bytes(bytes(data))
    elif case == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif case in ("nan", "extra tensor", "float64"):
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(weights)
        if case == "nan":
            tensors["rnn.weight_hh_l0"][0] = float("nan")
        elif case == "extra tensor":
            tensors["extra"] = torch.zeros(2)
        else:
            tensors["dense.bias"] = tensors["dense.bias"].double()
        save_file(tensors, weights, metadata={**metadata, "tensors_sha256": tensors_sha256(tensors)})
    elif case == "config not matching":
        config["model"]["hidden_size"] = 40
    elif case == "vocab reordered":
        chars = json.loads((run / "vocab.json").read_text())["chars"]
        (run / "vocab.json").write_text(json.dumps({"format_version": 2, "chars": chars[1:] + chars[:1]}))
    elif case == "no weights":
        weights.unlink()
        (run / "latest.safetensors").unlink()
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("flipped byte", "SHA-256"),
        ("truncated", "best.safetensors is damaged"),
        ("nan", "tensor rnn.weight_hh_l0 holds NaN"),
        ("extra tensor", "its tensor extra is not in the model"),
        ("float64", "tensor dense.bias is float64"),
        ("config not matching", "does not match the run's config.json: tensor rnn.weight_ih_l0"),
        ("vocab reordered", "not the vocabulary"),
        ("no weights", "no checkpoint yet"),
    ],
)
def test_damaged_runs_are_the_same_error_on_both_paths(case, fragment, tiny_run, tmp_path, kernels):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _damage(run, case)
    with pytest.raises(CharRNNError) as numpy_path:
        charrnn.load(run)
    with pytest.raises(CharRNNError) as torch_path:
        load_torch(run)
    assert str(numpy_path.value) == str(torch_path.value)
    assert fragment in str(numpy_path.value), numpy_path.value


# -- one precision rule -----------------------------------------------------------------------------------
@pytest.mark.parametrize("int8", [True, False])
def test_both_paths_choose_the_same_precision(int8, tiny_run, kernels, monkeypatch):
    monkeypatch.setattr(native, "int8_native", lambda: int8)
    for precision in ("auto", "fp32", "bf16", "int8"):
        ours, theirs = charrnn.load(tiny_run, precision=precision), load_torch(tiny_run, precision=precision)
        assert isinstance(ours, runs.KernelRun) and isinstance(theirs, CharModel)
        for batch in (1, native.BF16_MIN_BATCH, 64):
            assert ours.dtype_for(batch) == precision_name(theirs.dtype_for(batch)), (precision, batch)
            assert ours.backend(batch).precision == theirs.backend(batch).precision
    if int8:
        assert charrnn.load(tiny_run).dtype_for(1) == "int8"


def test_a_bad_precision_is_the_same_error_on_both_paths(tiny_run):
    for load in (charrnn.load, load_torch):
        with pytest.raises(CharRNNError, match=r"precision must be one of auto, bf16, fp32, int8; got 'fp16'"):
            load(tiny_run, precision="fp16")


# -- the torch-free model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "int8"])
def test_the_torch_free_model_writes_and_describes_what_charmodel_does(precision, tiny_run, kernels):
    ours, theirs = charrnn.load(tiny_run, precision=precision), load_torch(tiny_run, precision=precision)
    assert ours.generate(["ROMEO:", ""], length=200, seed=7, num_samples=2, temperature=0.8) == theirs.generate(
        ["ROMEO:", ""], length=200, seed=7, num_samples=2, temperature=0.8
    )
    assert ours.describe() == theirs.describe()
    assert ours.describe()["checkpoint"] == {"file": "best.safetensors", "epoch": 2, "step": ours.checkpoint["step"]}
    assert ours.describe()["last_epoch"]["kind"] == "epoch"
    assert ours.state_values() == theirs.state_values()


def test_evaluation_loads_pytorch_on_first_use(tiny_run, small_text, kernels):
    model = charrnn.load(tiny_run, precision="fp32")
    assert "torch_model" not in vars(model)
    text = small_text.read_text()[:2000]
    assert model.evaluate(text) == load_torch(tiny_run, precision="fp32").evaluate(text)
    assert isinstance(model.model, CharRNN) and model.device == torch.device("cpu")
    assert vars(model)["torch_model"].checkpoint == model.checkpoint


def test_other_cells_devices_and_the_switch_load_charmodel(tiny_run, kernels, monkeypatch):
    assert isinstance(charrnn.load(tiny_run), runs.KernelRun)
    assert isinstance(charrnn.load(tiny_run, device="auto" if not torch.cuda.is_available() else "cuda"), CharModel)
    monkeypatch.setenv(runs.TORCH_VARIABLE, "1")
    assert isinstance(charrnn.load(tiny_run), CharModel)
    monkeypatch.delenv(runs.TORCH_VARIABLE)
    monkeypatch.setattr(build, "available", lambda: False)
    assert isinstance(charrnn.load(tiny_run), CharModel)
    assert not runs.kernels_apply(ModelConfig(vocab_size=3, cell="lstm"))


# -- without PyTorch, end to end --------------------------------------------------------------------------
def test_generate_runs_with_torch_blocked(tiny_run, kernels):
    args = ("generate", tiny_run, "--length", "300", "--seed", "3", "--prompt", "ROMEO:")
    result = blocked(*args)
    assert result.returncode == 0, result.stderr
    torch_result = subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, runs.TORCH_VARIABLE: "1"},
    )
    assert torch_result.returncode == 0, torch_result.stderr
    assert result.stdout == torch_result.stdout and len(result.stdout) == len("ROMEO:") + 300 + 1
    several = blocked("generate", tiny_run, "--length", "50", "--num-samples", "3", "--temperature", "0.9")
    assert several.returncode == 0 and several.stdout.count("--- sample") == 3, several.stderr
    assert "--precision" in several.stderr  # the seed line names the precision to get the text again


def test_a_damaged_run_is_one_line_with_torch_blocked(tiny_run, tmp_path, kernels):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _damage(run, "nan")
    result = blocked("generate", run, "--length", "5")
    assert result.returncode == 2 and "holds NaN" in result.stderr and "Traceback" not in result.stderr


def test_serve_runs_with_torch_blocked(tiny_run, kernels):
    pytest.importorskip("fastapi")
    server = subprocess.Popen(
        [sys.executable, "-c", BLOCK_TORCH, "serve", str(tiny_run), "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline, line = time.time() + 60, ""
        while "http://" not in line and time.time() < deadline and server.poll() is None:
            line = server.stderr.readline()
        assert "http://" in line, (line, server.poll())
        url = line.split("http://", 1)[1].split("/", 1)[0]
        body = {"prompt": "ROMEO:", "length": 40, "seed": 5}
        answer = httpx.post(f"http://{url}/v1/generate", json=body, timeout=30).json()
        assert answer["samples"] == load_torch(tiny_run).generate("ROMEO:", length=40, seed=5)
        assert httpx.get(f"http://{url}/v1/model", timeout=30).json()["parameters"] > 0
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode != 97, "the server imported torch"

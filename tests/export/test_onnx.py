import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import charrnn
from charrnn import TrainConfig, Trainer, runtime
from charrnn.export.onnx import export
from conftest import run_cli


@pytest.fixture(scope="module")
def runs(small_text, tmp_path_factory):
    """Briefly trained runs of every cell type, 1 and 2 layers."""
    made = {}
    for cell in ("gru", "lstm", "rnn"):
        for layers in (1, 2):
            run = tmp_path_factory.mktemp("export") / f"{cell}{layers}"
            config = TrainConfig(text=str(small_text), max_steps=3, batch_size=8, seq_len=30, seed=1)
            Trainer.create(
                run,
                config,
                dict(embedding_size=8, hidden_size=24, num_layers=layers, cell=cell),
                out=open(os.devnull, "w"),
            ).fit()
            made[cell, layers] = run
    return made


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_onnx_matches_pytorch_and_gives_the_same_text(runs, cell, layers, tmp_path):
    run = runs[cell, layers]
    meta = export(run, tmp_path / "onnx")
    assert meta["format_version"] == 1 and meta["model"]["cell"] == cell
    assert {p.name for p in (tmp_path / "onnx").iterdir()} == {"model.onnx", "vocab.json", "export.json"}
    ours = charrnn.load(run, precision="fp32")
    exported = runtime.load(tmp_path / "onnx")
    rng = np.random.default_rng(0)
    for batch, steps in ((1, 1), (3, 9), (5, 2)):  # dynamic batch and sequence length
        ids = rng.integers(0, len(ours.vocab), (batch, steps))
        state = rng.normal(size=ours.model.initial_state(batch).shape).astype(np.float32)
        with torch.no_grad():
            logits, new_state = ours.model(torch.from_numpy(ids), torch.from_numpy(state), dtype=torch.float32)
        got_logits, got_state = exported.session.run(None, {"ids": ids, "state": state})
        np.testing.assert_allclose(got_logits, logits[:, -1].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_state, new_state.numpy(), atol=1e-4, rtol=0)
    for options in (dict(seed=3), dict(seed=4, temperature=0.7, top_k=5, num_samples=3), dict(seed=5, top_p=0.9)):
        assert exported.generate("ROMEO:", length=80, **options) == ours.generate("ROMEO:", length=80, **options)
    assert exported.describe()["parameters"] == sum(p.numel() for p in ours.model.parameters())


def test_runtime_never_imports_torch(runs, tmp_path):
    export(runs["lstm", 2], tmp_path / "onnx")
    script = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        from charrnn import runtime
        model = runtime.load({str(tmp_path / "onnx")!r})
        print(model.generate("ROMEO:", length=40, seed=1)[0])
        from charrnn.cli import main
        code = main(["generate", {str(tmp_path / "onnx")!r}, "--prompt", "ROMEO:", "--length", "40", "--seed", "1"])
        assert "torch" not in sys.modules
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ROMEO:") == 2
    expected = charrnn.load(runs["lstm", 2], precision="fp32").generate("ROMEO:", length=40, seed=1)[0]
    assert result.stdout.startswith(expected)


def test_export_cli_and_errors(runs, tmp_path):
    run = runs["gru", 1]
    result = run_cli("export", run, "--out", tmp_path / "e")
    assert result.returncode == 0, result.stderr
    assert "ONNX matches PyTorch" in result.stdout
    gen = run_cli("generate", tmp_path / "e", "--prompt", "ROMEO:", "--length", "30", "--seed", "2")
    assert gen.returncode == 0 and gen.stdout.startswith("ROMEO:")
    again = run_cli("export", run, "--out", tmp_path / "e")  # re-exporting over an export is fine
    assert again.returncode == 0

    from helpers import assert_one_line_error

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert_one_line_error(run_cli("export", run, "--out", tmp_path / "other"), "not a charrnn export")
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    assert_one_line_error(run_cli("export", tmp_path / "nothing"), "is not a charrnn run")
    assert_one_line_error(run_cli("generate", tmp_path / "e", "--checkpoint", "best"), "is an export")
    assert_one_line_error(run_cli("generate", tmp_path / "e", "--prompt", "€"), "never saw")
    meta = json.loads((tmp_path / "e" / "export.json").read_text())
    (tmp_path / "e" / "export.json").write_text(json.dumps({**meta, "format_version": 99}))
    assert_one_line_error(run_cli("generate", tmp_path / "e"), "export format version 99 is not supported")

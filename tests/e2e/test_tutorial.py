"""docs/tutorial.ipynb runs top to bottom against the public API and shows what its text says it shows."""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("onnxruntime")

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "tutorial.ipynb"


def _use_this_python(tmp_path: Path, monkeypatch) -> None:
    """A `python3` kernel spec that runs this interpreter: a user-wide spec of the same name could name
    another Python, one without charrnn. JUPYTER_PATH is searched before every other kernel folder."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))


def _text(cell) -> str:
    """Everything a code cell printed."""
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_tutorial_notebook_runs(tmp_path, monkeypatch):
    # conftest points CHARRNN_DATA_DIR at ../shared/data; the kernel inherits it and reads the text there.
    data = Path(os.environ.get("CHARRNN_DATA_DIR", "")) / "shakespeare.txt"
    if not data.is_file():
        pytest.skip(f"{data} is missing (the tutorial's corpus, kept beside the repo)")
    _use_this_python(tmp_path, monkeypatch)
    # One thread: on a shared CPU, OpenMP's spinning barriers stall a two-thread step whenever another
    # process holds a core (seconds per step instead of milliseconds); one thread only shares the core.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's runs land where pytest cleans up
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "the notebook is kept without outputs: clear them"
    )

    # Run from docs/, where Jupyter starts a notebook's kernel; the notebook writes only to temporary folders.
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    printed = [_text(cell) for cell in nb.cells if cell.cell_type == "code"]
    everything = "\n".join(printed)
    assert "Length of text: 1,115,394 characters" in everything
    assert "First Citizen" in printed[0]
    assert "65 unique characters" in everything
    assert "The tutorial's model: 4,021,569 parameters" in everything
    assert "(1, 13, 65)" in everything and "(1, 1, 128)" in everything and "same scores: True" in everything
    assert "callback: epoch 2 ended" in everything and "best.safetensors" in everything
    assert "same seed, same text: True" in everything
    assert "streamed == generated: True" in everything
    assert "export == PyTorch: True" in everything

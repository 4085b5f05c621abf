"""One loader for everything generation reads: a run folder or an export folder (ONNX Runtime).

An export loads without importing torch; so does a run whose GRU the step kernels run (generation/runs.py).
"""

from __future__ import annotations

from pathlib import Path

from charrnn.config import GENERATION_DEVICE
from charrnn.errors import CharRNNError
from charrnn.generation.exported import is_export
from charrnn.generation.exported import load as load_export


def load_any(
    path: str | Path,
    checkpoint: str | None = None,
    device: str = GENERATION_DEVICE,
    threads: int | None = None,
    precision: str = "auto",
):
    """An export directory (ONNX Runtime, no torch) or a run directory (`charrnn.load`: without torch
    where the step kernels run it): what `charrnn generate` and `charrnn serve` accept. `threads`: the
    compute threads (ONNX Runtime's intra-op pool, the step kernels' or torch's); None leaves the default
    (the cores)."""
    if is_export(path):
        if checkpoint or device != GENERATION_DEVICE or precision not in ("auto", "fp32"):
            raise CharRNNError(
                f"{path} is an export (fp32 ONNX): --checkpoint, --device and --precision apply to run directories only"
            )
        return load_export(path, threads)
    from charrnn.generation.runs import load as load_run

    return load_run(path, checkpoint=checkpoint, device=device, precision=precision, threads=threads)

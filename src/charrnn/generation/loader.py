"""One loader for everything generation reads: a run folder (PyTorch) or an export folder (ONNX Runtime).

An export loads without importing torch; a run imports it only when one is loaded.
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
    """An export directory (ONNX Runtime, no torch) or a run directory (`charrnn.load`, which
    imports torch only then): what `charrnn generate` and `charrnn serve` accept. `threads`: the compute
    threads (ONNX Runtime's intra-op pool, or torch's); None leaves the library's default (the cores)."""
    if is_export(path):
        if checkpoint or device != GENERATION_DEVICE or precision not in ("auto", "fp32"):
            raise CharRNNError(
                f"{path} is an export (fp32 ONNX): --checkpoint, --device and --precision apply to run directories only"
            )
        return load_export(path, threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from charrnn.generation.torch_model import load as load_run

    return load_run(path, checkpoint=checkpoint, device=device, precision=precision)

"""`charrnn.load(RUN)`: a run's model, generating without PyTorch wherever the step kernels can run it.

Why: importing PyTorch is most of a short `charrnn generate`'s time (about 1.1 s of 1.35 s for 1,000
characters), yet a GRU on the CPU steps through the C step kernels, which need only numpy. Such a run is
loaded as a `KernelRun`: read and checked by arrays.load_run, its precision chosen by kernels/native.py,
exactly as the PyTorch path does both, so the two give the same text. What only PyTorch computes
(`evaluate`, `.model`) loads the PyTorch model the first time it is asked for.

Anything else (LSTM and RNN cells, CUDA or --device auto, no C compiler) loads a CharModel, as does
CHARRNN_TORCH_GENERATION=1 (to compare the two: bench/startup.py).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.config import GENERATION_DEVICE, ModelConfig
from charrnn.generation.described import Described
from charrnn.generation.kernel_model import KernelModel
from charrnn.kernels import build, native
from charrnn.model import arrays

TORCH_VARIABLE = "CHARRNN_TORCH_GENERATION"


def kernels_apply(config: ModelConfig) -> bool:
    """Whether a run of `config` on the CPU generates without PyTorch: a GRU, with the step kernels built,
    and CHARRNN_TORCH_GENERATION not set."""
    return config.cell == "gru" and not os.environ.get(TORCH_VARIABLE) and build.available()


class KernelRun(Described, KernelModel):
    """A run generating through the step kernels without PyTorch, described like CharModel, with
    CharModel's evaluation (and `model`, `device`) on a PyTorch model loaded on first use."""

    def __init__(self, run: arrays.RunArrays, run_dir: Path, precision: str = "auto", threads: int | None = None):
        native.check_generation_precision(precision, on_cpu=True)
        rule = functools.partial(
            native.generation_precision, precision, on_kernels=True, bf16_native=native.bf16_native_cpu
        )
        super().__init__(run.arrays, run.model_config, run.vocab, rule, threads)
        self.precision, self.run_dir, self.threads_asked = precision, run_dir, threads
        self.train_config, self.corpus, self.checkpoint = run.train_config, run.corpus, run.checkpoint

    @functools.cached_property
    def torch_model(self):
        """The CharModel of the same weights (the arrays this model packed, not the file again: a run still
        training may have replaced it), on the CPU with the same precision. Imports PyTorch."""
        from charrnn.generation.torch_model import from_arrays

        run = arrays.RunArrays(self.arrays, self.vocab, self.config, self.train_config, self.corpus, self.checkpoint)
        return from_arrays(run, self.run_dir, GENERATION_DEVICE, self.precision, self.threads_asked)

    @property
    def model(self):
        return self.torch_model.model

    @property
    def device(self):
        return self.torch_model.device

    def evaluate(self, text: str, *args: Any, **kwargs: Any) -> dict[str, float]:
        """CharModel.evaluate, on the PyTorch model (loaded the first time)."""
        return self.torch_model.evaluate(text, *args, **kwargs)

    def evaluate_ids(self, ids: np.ndarray, *args: Any, **kwargs: Any) -> dict[str, float]:
        """CharModel.evaluate_ids, on the PyTorch model (loaded the first time)."""
        return self.torch_model.evaluate_ids(ids, *args, **kwargs)


def load(
    run_dir: str | Path,
    checkpoint: str | None = None,
    device: str = GENERATION_DEVICE,
    precision: str = "auto",
    threads: int | None = None,
):
    """Load a run directory for generation: a KernelRun for a GRU on the CPU (`kernels_apply`), else a
    CharModel. checkpoint: 'best', 'latest' or None (best if it exists). precision: 'fp32', 'bf16', 'int8'
    (quantised, CPU), or 'auto' (int8 where AVX512-VNNI runs the step kernels, else bf16 where this
    hardware has it natively and it pays at the batch size, else fp32). threads: the compute threads
    (None: the library's default, the cores). `device` "auto" takes PyTorch to know whether there is a GPU."""
    if device != "cpu":
        from charrnn.generation.torch_model import load as load_torch

        return load_torch(run_dir, checkpoint, device, precision, threads)
    run = arrays.load_run(Path(run_dir), checkpoint)
    if kernels_apply(run.model_config):
        return KernelRun(run, Path(run_dir), precision, threads)
    from charrnn.generation.torch_model import from_arrays

    return from_arrays(run, Path(run_dir), device, precision, threads)

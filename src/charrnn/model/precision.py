"""Device and precision: the one place that decides them, for training and for generation.

Training's `auto`: bf16 where its matrix products beat fp32 (AMX tiles on CPU, bf16 tensor cores on
CUDA), else fp32. Generation's `auto` is kernels/native.py's rule (int8 where AVX512-VNNI runs the step
kernels, else bf16 where the device does bf16 natively and the batch gains from it, else fp32), which the
torch-free path follows too; here it is given the PyTorch model's device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from charrnn.config import PRECISIONS
from charrnn.errors import CharRNNError
from charrnn.kernels import cpu, native
from charrnn.kernels import step as stepkernels

if TYPE_CHECKING:
    from charrnn.model.network import CharRNN


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 matrix products are fast here (AVX512-BF16/AMX on CPU, bf16 tensor cores on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return native.bf16_native_cpu()


def bf16_trains_faster(device: torch.device) -> bool:
    """Whether training's bf16 products beat fp32 here: bf16 tensor cores, or AMX tiles on CPU. Measured
    (bench/speed.py, docs/benchmarks.md): the tutorial's step took 268 ms in bf16 against 761 ms in fp32 on a
    Xeon with AMX, but 930 ms against 700 ms on one whose AMX faults (AVX512-BF16 products only)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()) and cpu.amx_usable()


def steps_on_kernels(model: CharRNN, dtype: torch.dtype) -> bool:
    """Whether generation steps `model` in `dtype` through the step kernels: a GRU on CPU, with them built."""
    return model.config.cell == "gru" and model.dense.weight.device.type == "cpu" and stepkernels.usable(dtype)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def generation_dtype(name: str, model: CharRNN, batch: int) -> torch.dtype:
    """The matrix-product dtype that generates a batch of `batch` rows of `model` with precision `name`:
    kernels/native.py's rule, the one the torch-free path follows too."""
    device = model.dense.weight.device
    native.check_generation_precision(name, device.type == "cpu")
    on_kernels = steps_on_kernels(model, torch.float32)
    return DTYPES[native.generation_precision(name, batch, on_kernels, lambda: bf16_native(device))]


def resolve_precision(name: str, device: torch.device, generation: bool = False) -> torch.dtype:
    """Training's dtype for `name` (auto: bf16 where it trains faster, else fp32), or with `generation`
    the check of a generation precision, which also allows int8 (generation_dtype decides auto per batch)."""
    if generation:
        native.check_generation_precision(name, device.type == "cpu")
        if name != "auto":
            return DTYPES[name]
        return torch.bfloat16 if bf16_native(device) else torch.float32
    if name not in PRECISIONS:
        raise CharRNNError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name == "auto":
        return torch.bfloat16 if bf16_trains_faster(device) else torch.float32
    return DTYPES[name]


def precision_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.int8: "int8"}.get(dtype, "fp32")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharRNNError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise CharRNNError(f"device must be auto, cpu or cuda; got {name!r}")
    return torch.device(name)

"""Device and precision: the one place that decides them, for training and for generation.

Training's `auto`: bf16 where its matrix products beat fp32 (AMX tiles on CPU, bf16 tensor cores on
CUDA), else fp32. Generation's `auto`: int8 where AVX512-VNNI runs the step kernels, else bf16 where the
CPU does bf16 natively (AVX512-BF16 or AMX) and the batch is large enough to gain from it, else fp32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from charrnn.config import GENERATION_PRECISIONS, PRECISIONS
from charrnn.errors import CharRNNError
from charrnn.kernels import cpu
from charrnn.kernels import step as stepkernels

if TYPE_CHECKING:
    from charrnn.model.network import CharRNN


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 matrix products are fast here (AVX512-BF16/AMX on CPU, bf16 tensor cores on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()

    def supported(name):
        return getattr(torch.cpu, name, lambda: False)()

    return supported("_is_avx512_bf16_supported") or (supported("_is_amx_tile_supported") and cpu.amx_usable())


def bf16_trains_faster(device: torch.device) -> bool:
    """Whether training's bf16 products beat fp32 here: bf16 tensor cores, or AMX tiles on CPU. Measured
    (bench/speed.py, README Speed): the tutorial's step took 268 ms in bf16 against 761 ms in fp32 on a
    Xeon with AMX, but 930 ms against 700 ms on one whose AMX faults (AVX512-BF16 products only)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()) and cpu.amx_usable()


def int8_native(device: torch.device) -> bool:
    """Whether generation's int8 step kernels run at full speed here: AVX512-VNNI integer dot products."""
    return device.type == "cpu" and "avx512_vnni" in cpu.cpu_flags() and stepkernels.usable(torch.int8)


def steps_on_kernels(model: CharRNN, dtype: torch.dtype) -> bool:
    """Whether generation steps `model` in `dtype` through the step kernels: a GRU on CPU, with them built."""
    return model.config.cell == "gru" and model.dense.weight.device.type == "cpu" and stepkernels.usable(dtype)


def resolve_precision(name: str, device: torch.device, generation: bool = False) -> torch.dtype:
    """auto -> bf16 where it is the faster here (training: bf16_trains_faster; generation: bf16_native), else
    fp32. `generation` also allows int8 (the step kernels' quantised products; training has no int8)."""
    allowed = GENERATION_PRECISIONS if generation else PRECISIONS
    if name not in allowed:
        raise CharRNNError(f"precision must be one of {', '.join(allowed)}; got {name!r}")
    if name == "auto":
        return torch.bfloat16 if (bf16_native(device) if generation else bf16_trains_faster(device)) else torch.float32
    if name == "int8":
        if device.type != "cpu" or not stepkernels.usable(torch.int8):
            raise CharRNNError(
                "precision int8 runs on the CPU step kernels, which need a C compiler (gcc) here; "
                "use --precision bf16 or fp32"
            )
        return torch.int8
    return torch.bfloat16 if name == "bf16" else torch.float32


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

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
    (bench/speed.py, docs/benchmarks.md): the tutorial's step took 268 ms in bf16 against 761 ms in fp32 on a
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


# With precision "auto" and no step kernels (no C compiler; CUDA), batches at least this large generate
# with bf16 where the hardware has native bf16: below it, PyTorch's bf16 products cost more than fp32's.
BF16_MIN_BATCH = 8


def generation_dtype(name: str, model: CharRNN, batch: int) -> torch.dtype:
    """The matrix-product dtype that generates a batch of `batch` rows of `model` with precision `name`."""
    device = model.dense.weight.device
    if name != "auto":
        return resolve_precision(name, device, generation=True)
    # Measured (bench/speed.py): with VNNI, int8 is the fastest at every batch size (batch 1 reads a
    # quarter of fp32's bytes, batch 64 does 4x the multiply-adds per instruction) and moves the
    # validation loss by 5e-5 nats/char; then bf16 where native, which reads half of fp32's bytes at batch 1.
    if int8_native(device):
        return torch.int8
    if not bf16_native(device):
        return torch.float32
    fast = steps_on_kernels(model, torch.bfloat16) or batch >= BF16_MIN_BATCH
    return torch.bfloat16 if fast else torch.float32


def resolve_precision(name: str, device: torch.device, generation: bool = False) -> torch.dtype:
    """Training's dtype for `name` (auto: bf16 where it trains faster, else fp32), or with `generation`
    the check of a generation precision, which also allows int8 (generation_dtype decides auto per batch)."""
    allowed = GENERATION_PRECISIONS if generation else PRECISIONS
    if name not in allowed:
        raise CharRNNError(f"precision must be one of {', '.join(allowed)}; got {name!r}")
    if name == "auto":
        native = bf16_native(device) if generation else bf16_trains_faster(device)
        return torch.bfloat16 if native else torch.float32
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

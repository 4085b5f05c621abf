"""Generation's precision rule, decided from the CPU's flags without PyTorch.

Why here: `charrnn generate RUN` on the step kernels runs without importing PyTorch (a second of a short
run's time), so the rule cannot ask torch what the CPU does. model/precision.py's `generation_dtype` calls
the same functions, so a model generates in the same precision whichever path loaded it.

`auto`: int8 where AVX512-VNNI runs the step kernels, else bf16 where the CPU does bf16 natively
(AVX512-BF16, or AMX that really runs) and the batch gains from it, else fp32.
"""

from __future__ import annotations

from collections.abc import Callable

from charrnn.config import GENERATION_PRECISIONS
from charrnn.errors import CharRNNError
from charrnn.kernels import build, cpu

# With precision "auto" and no step kernels (no C compiler; CUDA), batches at least this large generate
# with bf16 where the hardware has native bf16: below it, PyTorch's bf16 products cost more than fp32's.
BF16_MIN_BATCH = 8


def bf16_native_cpu() -> bool:
    """Whether this CPU does bf16 products natively: AVX512-BF16, or AMX tiles that do not fault."""
    flags = cpu.cpu_flags()
    return "avx512_bf16" in flags or ("amx_tile" in flags and cpu.amx_usable())


def int8_native() -> bool:
    """Whether the int8 step kernels run at full speed here: AVX512-VNNI integer dot products."""
    return "avx512_vnni" in cpu.cpu_flags()


def check_generation_precision(name: str, on_cpu: bool) -> None:
    """Refuse a precision generation does not know, or int8 where the step kernels cannot run it."""
    if name not in GENERATION_PRECISIONS:
        raise CharRNNError(f"precision must be one of {', '.join(GENERATION_PRECISIONS)}; got {name!r}")
    if name == "int8" and not (on_cpu and build.available()):
        raise CharRNNError(
            "precision int8 runs on the CPU step kernels, which need a C compiler (gcc) here; "
            "use --precision bf16 or fp32"
        )


def generation_precision(name: str, batch: int, on_kernels: bool, bf16_native: Callable[[], bool]) -> str:
    """The precision ("fp32", "bf16" or "int8") that generates a batch of `batch` rows with precision
    `name`, which check_generation_precision has accepted. `on_kernels`: the step kernels step this model
    (a GRU on the CPU, the kernels built); `bf16_native()`: whether the device does bf16 natively, asked
    only when it matters (on a CPU with AMX and no AVX512-BF16 it may start a probe)."""
    if name != "auto":
        return name
    # Measured (bench/speed.py): with VNNI, int8 is the fastest at every batch size (batch 1 reads a
    # quarter of fp32's bytes, batch 64 does 4x the multiply-adds per instruction) and moves the
    # validation loss by 5e-5 nats/char; then bf16 where native, which reads half of fp32's bytes at batch 1.
    if on_kernels and int8_native():
        return "int8"
    if not bf16_native():
        return "fp32"
    return "bf16" if on_kernels or batch >= BF16_MIN_BATCH else "fp32"

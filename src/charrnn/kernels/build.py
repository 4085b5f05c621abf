"""Builds the C kernels (gates.c for training, step.c for generation) into one library, cached per source and CPU.

Why: each GRU step does a dozen elementwise operations on (batch, hidden) tensors around its one
matrix product. As separate PyTorch calls they cost about half a training step on a 2-core CPU; fused
into one pass per step (forward) and one per step (backward) they cost a few percent. The C needs no
PyTorch headers, so gcc builds it in about a second; it is cached per source and CPU, and built with
-march=native because it runs where it is built. Without a C compiler (or with CHARRNN_NO_KERNELS=1)
`available()` is False and callers use the pure-PyTorch path, which computes the same function.
This module needs no PyTorch: gates.py and step.py wrap the library for tensors.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from charrnn.errors import CharRNNError
from charrnn.kernels.cpu import cpu_flags
from charrnn.storage.files import atomic_path, cache_dir

SOURCES = ("gates.c", "step.c")
STEP_SUFFIXES = ("f32", "bf16", "i8")  # step.c's product types: fp32, bf16, int8


# -ffast-math (whole: any -fno-... part of it undefines __FAST_MATH__) is what makes glibc declare its
# vectorised expf/tanhf (libmvec); the bf16 NaN test is integer arithmetic, so it survives fast-math.
# It is a compile flag only: linking with it adds crtfastmath.o, which turns on flush-to-zero for the
# whole process that loads the library (subnormals become 0 everywhere, not just in these loops).
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp", "-fPIC"]
LINK_FLAGS = ["-shared", "-fopenmp"]

_lock = threading.Lock()
_library = None
_failure: str | None = None


def _source() -> str:
    """The C sources beside this file: training's gate kernels and generation's step products, one library."""
    here = Path(__file__).parent
    return "".join((here / name).read_text(encoding="utf-8") for name in SOURCES)


def library() -> ctypes.CDLL:
    """The built library (callers check available() first)."""
    return _library


def _cpu_id() -> str:
    return platform.machine() + " ".join(sorted(cpu_flags()) or [platform.processor()])


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler (gcc) found")
    key = hashlib.sha256((_source() + " ".join(FLAGS + LINK_FLAGS) + _cpu_id()).encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"gru-{key}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            # Source and object beside this process's own temporary: DDP ranks (or two runs) building at
            # once on a fresh machine never read each other's half-written files.
            source, obj = tmp.with_suffix(".c"), tmp.with_suffix(".o")
            source.write_text(_source())
            try:
                for command in (
                    [compiler, *FLAGS, "-c", str(source), "-o", str(obj)],
                    [compiler, *LINK_FLAGS, str(obj), "-o", str(tmp), "-lmvec", "-lm"],
                ):
                    result = subprocess.run(command, capture_output=True, text=True)
                    if result.returncode != 0:
                        raise RuntimeError(f"{compiler} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
            finally:
                source.unlink(missing_ok=True)
                obj.unlink(missing_ok=True)
    library = ctypes.CDLL(str(path))
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    for suffix in ("f32", "bf16"):
        for name in (f"gru_forward_{suffix}", f"gru_backward_{suffix}"):
            function = getattr(library, name)
            function.argtypes = [i64, i64, i32] + [ptr] * 9
            function.restype = None
        transpose = getattr(library, f"transpose_{suffix}")
        transpose.argtypes = [i64, i64, i32, ptr, ptr, i64]
        transpose.restype = None
    for suffix in STEP_SUFFIXES:
        getattr(library, f"matvec_{suffix}").argtypes = [i64, i64, i64, i32] + [ptr] * 7
        getattr(library, f"matvec_{suffix}").restype = None
        getattr(library, f"gru_layer_step_{suffix}").argtypes = [i64, i64, i32] + [ptr] * 8
        getattr(library, f"gru_layer_step_{suffix}").restype = None
        getattr(library, f"gru_model_step_{suffix}").argtypes = [i64, i64, i64, i64, i32] + [ptr] * 8
        getattr(library, f"gru_model_step_{suffix}").restype = i32
    return library


def available() -> bool:
    """Whether the fused kernels are usable here (built on first call; False means the PyTorch path)."""
    global _library, _failure
    if _library is not None:
        return True
    if _failure is not None or os.environ.get("CHARRNN_NO_KERNELS"):
        return False
    with _lock:
        if _library is None and _failure is None:
            try:
                _library = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError, CharRNNError) as exc:  # e.g. an unwritable cache
                _failure = str(exc)
                print(
                    f"charrnn: fused CPU kernels unavailable ({_failure}); using the slower PyTorch path",
                    file=sys.stderr,
                )
    return _library is not None

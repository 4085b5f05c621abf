"""Fused GRU gate kernels in C, compiled on first use and called through ctypes.

Why: each GRU step does a dozen elementwise operations on (batch, hidden) tensors around its one
matrix product. As separate PyTorch calls they cost about half a training step on a 2-core CPU; fused
into one pass per step (forward) and one per step (backward) they cost a few percent. The C needs no
PyTorch headers, so gcc builds it in about a second; it is cached per source and CPU, and built with
-march=native because it runs where it is built. Without a C compiler (or with CHARRNN_NO_KERNELS=1)
`available()` is False and callers use the pure-PyTorch path, which computes the same function.
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

import torch

from .errors import CharRNNError
from .files import atomic_path

SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* Products come in fp32 (type float) or bf16 (type uint16_t, raw bits). */
static inline float from_f32(float v) { return v; }
static inline float to_f32(float v) { return v; }
static inline float from_bf16(uint16_t v) { union { uint32_t u; float f; } x; x.u = (uint32_t)v << 16; return x.f; }
static inline uint16_t to_bf16(float v) {
    union { uint32_t u; float f; } x; x.f = v;
    uint32_t rounded = (x.u + 0x7FFFu + ((x.u >> 16) & 1u)) >> 16;   /* round to nearest even */
    return (uint16_t)(((x.u & 0x7FFFFFFFu) > 0x7F800000u) ? 0x7FC0u : rounded);  /* NaN stays NaN */
}

/* One GRU step for each row: gi (3H) fp32, gh (3H) product dtype, h (H) fp32 -> h_out (H) fp32,
   h_low (H) product dtype, r and z (2H), and the backward coefficients a = (1-z)(1-n^2),
   b = (h-n) z (1-z), c = r (1-r) gh_n. Inference uses the same function (one compiled loop, so
   generation and training compute identical states), writing the extras to scratch. */
#define FORWARD(NAME, T, LOAD, STORE)                                                      \
void NAME(int64_t batch, int64_t H, int threads, const float *gi, const T *gh, const float *h,    \
          float *h_out, T *h_low, float *rz, float *a, float *b, float *c) {                       \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if (batch > 1)")              \
    for (int64_t row = 0; row < batch; ++row) {                                                   \
        const float *restrict gi_r = gi + row * 3 * H, *restrict h_r = h + row * H;               \
        const T *restrict gh_r = gh + row * 3 * H;                                                \
        float *restrict ho_r = h_out + row * H;                                                   \
        T *restrict hl_r = h_low + row * H;                                                       \
        float *restrict rz_r = rz + row * 2 * H, *restrict a_r = a + row * H;                     \
        float *restrict b_r = b + row * H, *restrict c_r = c + row * H;                           \
        _Pragma("omp simd simdlen(16)")  /* gcc declines these many-stream loops as unprofitable; they pay */ \
        for (int64_t j = 0; j < H; ++j) {                                                         \
            float r = 1.0f / (1.0f + expf(-(gi_r[j] + LOAD(gh_r[j]))));                           \
            float z = 1.0f / (1.0f + expf(-(gi_r[H + j] + LOAD(gh_r[H + j]))));                   \
            float ghn = LOAD(gh_r[2 * H + j]);                                                    \
            float n = tanhf(gi_r[2 * H + j] + r * ghn);                                           \
            float hp = h_r[j];                                                                    \
            float hn = n + z * (hp - n);                                                          \
            ho_r[j] = hn;                                                                         \
            hl_r[j] = STORE(hn);                                                                  \
            float omz = 1.0f - z;                                                                 \
            rz_r[j] = r; rz_r[H + j] = z;                                                         \
            a_r[j] = omz * (1.0f - n * n); b_r[j] = (hp - n) * z * omz;                           \
            c_r[j] = r * (1.0f - r) * ghn;                                                        \
        }                                                                                         \
    }                                                                                             \
}

FORWARD(gru_forward_f32, float, from_f32, to_f32)
FORWARD(gru_forward_bf16, uint16_t, from_bf16, to_bf16)

/* One backward step per row: dh (H) holds the carried gradient (dh_next * z); with gy (H, fp32) and
   gprev (H, product dtype: d_gh_next W_hh) the step's gradient is d = dh + gy + gprev. Writes
   d_gi = [d_r, d_z, d_n] fp32 and d_gh = [d_r, d_z, r d_n], and leaves d * z in dh. */
#define BACKWARD(NAME, T, LOAD, STORE)                                                            \
void NAME(int64_t batch, int64_t H, int threads, float *dh, const float *gy, const T *gprev,      \
          const float *a, const float *b, const float *c, const float *rz, float *d_gi, T *d_gh) { \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if (batch > 1)")              \
    for (int64_t row = 0; row < batch; ++row) {                                                   \
        float *restrict dh_r = dh + row * H;                                                      \
        const float *restrict gy_r = gy + row * H, *restrict a_r = a + row * H;                   \
        const float *restrict b_r = b + row * H, *restrict c_r = c + row * H;                     \
        const float *restrict rz_r = rz + row * 2 * H;                                            \
        const T *restrict gp_r = gprev + row * H;                                                 \
        float *restrict dgi_r = d_gi + row * 3 * H;                                               \
        T *restrict dgh_r = d_gh + row * 3 * H;                                                   \
        _Pragma("omp simd simdlen(16)")  /* gcc declines these many-stream loops as unprofitable; they pay */ \
        for (int64_t j = 0; j < H; ++j) {                                                         \
            float d = dh_r[j] + gy_r[j] + LOAD(gp_r[j]);                                          \
            float r = rz_r[j], z = rz_r[H + j];                                                   \
            float dn = d * a_r[j], dz = d * b_r[j], dr = dn * c_r[j];                             \
            dgi_r[j] = dr; dgi_r[H + j] = dz; dgi_r[2 * H + j] = dn;                              \
            dgh_r[j] = STORE(dr); dgh_r[H + j] = STORE(dz); dgh_r[2 * H + j] = STORE(dn * r);     \
            dh_r[j] = d * z;                                                                      \
        }                                                                                         \
    }                                                                                             \
}

BACKWARD(gru_backward_f32, float, from_f32, to_f32)
BACKWARD(gru_backward_bf16, uint16_t, from_bf16, to_bf16)

/* dst[c * dst_stride + r] = src[r * cols + c]: a (rows, cols) block written transposed into a wider
   matrix. Blocks of 64 columns keep the destination lines being filled in L1. */
#define TRANSPOSE(NAME, T)                                                                        \
void NAME(int64_t rows, int64_t cols, int threads, const T *src, T *dst, int64_t dst_stride) {    \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                             \
    for (int64_t c0 = 0; c0 < cols; c0 += 64) {                                                   \
        int64_t c1 = c0 + 64 < cols ? c0 + 64 : cols;                                             \
        for (int64_t r = 0; r < rows; ++r) {                                                      \
            const T *restrict s = src + r * cols;                                                 \
            for (int64_t c = c0; c < c1; ++c) dst[c * dst_stride + r] = s[c];                     \
        }                                                                                         \
    }                                                                                             \
}

TRANSPOSE(transpose_f32, float)
TRANSPOSE(transpose_bf16, uint16_t)
"""


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
    from . import stepkernels  # generation's products, built into the same library

    return SOURCE + stepkernels.SOURCE


def library() -> ctypes.CDLL:
    """The built library (callers check available() first)."""
    return _library


def _cpu_id() -> str:
    from .cpu import cpu_flags

    return platform.machine() + " ".join(sorted(cpu_flags()) or [platform.processor()])


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler (gcc) found")
    key = hashlib.sha256((_source() + " ".join(FLAGS + LINK_FLAGS) + _cpu_id()).encode()).hexdigest()[:16]
    from .corpus import cache_dir

    path = cache_dir() / "kernels" / f"gru-{key}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            # Source and object beside this process's own temporary: DDP ranks (or two runs) building at
            # once on a fresh machine never read each other's half-written files.
            source, obj = tmp.with_suffix(".c"), tmp.with_suffix(".o")
            source.write_text(_source())
            try:
                for command in ([compiler, *FLAGS, "-c", str(source), "-o", str(obj)],
                                [compiler, *LINK_FLAGS, str(obj), "-o", str(tmp), "-lmvec", "-lm"]):
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
    from . import stepkernels

    stepkernels.declare(library, i64, i32, ptr)
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
                print(f"charrnn: fused CPU kernels unavailable ({_failure}); using the slower PyTorch path", file=sys.stderr)
    return _library is not None


def usable(state: torch.Tensor, product_dtype: torch.dtype) -> bool:
    """Whether the kernels handle this case: fp32 state on CPU, fp32 or bf16 products."""
    return (state.dtype == torch.float32 and state.device.type == "cpu"
            and product_dtype in (torch.float32, torch.bfloat16) and available())


def _ptr(tensor: torch.Tensor | None):
    return None if tensor is None else tensor.data_ptr()


def _suffix(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "f32"


def gru_forward(gi, gh, h, h_out, h_low_out, rz, a, b, c) -> None:
    """See SOURCE: every tensor contiguous on CPU, rows of (batch, ...)."""
    batch, hidden = h.shape
    (_library.gru_forward_bf16 if gh.dtype == torch.bfloat16 else _library.gru_forward_f32)(batch, hidden, torch.get_num_threads(), _ptr(gi), _ptr(gh), _ptr(h), _ptr(h_out),
                            _ptr(h_low_out), _ptr(rz), _ptr(a), _ptr(b), _ptr(c))


def gru_backward(dh, gy, gprev, a, b, c, rz, d_gi, d_gh) -> None:
    """See SOURCE; gy (fp32) and gprev (product dtype) must be given, zeros where there is nothing to add."""
    batch, hidden = dh.shape
    getattr(_library, f"gru_backward_{_suffix(d_gh.dtype)}")(
        batch, hidden, torch.get_num_threads(), _ptr(dh), _ptr(gy), _ptr(gprev), _ptr(a), _ptr(b), _ptr(c),
        _ptr(rz), _ptr(d_gi), _ptr(d_gh))


def transpose_into(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst (cols, rows) = src (rows, cols).t(), where dst may be a column block of a wider matrix whose
    rows are contiguous (dst.stride(1) == 1)."""
    rows, cols = src.shape
    getattr(_library, f"transpose_{_suffix(src.dtype)}")(rows, cols, torch.get_num_threads(), _ptr(src), _ptr(dst), dst.stride(0))



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

# Generation's products: a matrix-vector product per row, written out because at batch 1 PyTorch's
# GEMM paths cost 2-6x the time it takes to read the weights (bench/speed.py), and because here each
# output is one dot product summed in a fixed order, whatever the batch or the thread count: a row's
# result does not depend on what else is in the batch, which is what lets the server step many users'
# requests together and still give each the text it gets alone.
STEP_SOURCE = r"""
#include <immintrin.h>

/* Weights come packed (see pack_rows): rows padded to a multiple of 8 and columns to a multiple of 32
   with zeros, so every output is computed by the same code, eight rows at a time, with no leftovers:
   out[r] = dot(w row r, x) summed as 32-wide (bf16) or 16-wide (fp32) chunks in order into one vector
   accumulator, whose lanes are then added as a tree. That order does not depend on the batch, on which
   rows share a group or on the thread count. */
/* out[b * out_stride + r] = dot(w row r, x row b) for RW weight rows (stride w_stride) and RB input
   rows (stride n): a register tile of RW x RB accumulators, each summed in the one fixed order. */
#define TILE(NAME, RW, RB, T, STEP, VLOAD, FMA, GENERIC_MAC, HAVE)                                \
static inline void NAME(const T *restrict w, int64_t w_stride, const T *restrict x, int64_t n,    \
                        float *out, int64_t out_stride) {                                         \
    HAVE_##HAVE(                                                                                  \
        __m512 acc[RW][RB];                                                                       \
        for (int r = 0; r < RW; ++r) for (int b = 0; b < RB; ++b) acc[r][b] = _mm512_setzero_ps(); \
        for (int64_t i = 0; i < n; i += STEP) {                                                   \
            for (int r = 0; r < RW; ++r) {                                                        \
                __typeof__(VLOAD(w)) wv = VLOAD(w + r * w_stride + i);                            \
                for (int b = 0; b < RB; ++b) acc[r][b] = FMA(acc[r][b], wv, VLOAD(x + b * n + i)); \
            }                                                                                     \
        }                                                                                         \
        for (int r = 0; r < RW; ++r) for (int b = 0; b < RB; ++b)                                 \
            out[b * out_stride + r] = _mm512_reduce_add_ps(acc[r][b]);                            \
    ,                                                                                             \
        float acc[RW][RB][16] = {{{0}}};                                                          \
        for (int64_t i = 0; i < n; i += STEP)                                                     \
            for (int r = 0; r < RW; ++r) for (int b = 0; b < RB; ++b)                             \
                for (int l = 0; l < 16; ++l) GENERIC_MAC(acc[r][b][l], w + r * w_stride + i, x + b * n + i, l); \
        for (int r = 0; r < RW; ++r) for (int b = 0; b < RB; ++b) {                               \
            for (int width = 8; width; width /= 2)                                                \
                for (int l = 0; l < width; ++l) acc[r][b][l] += acc[r][b][l + width];             \
            out[b * out_stride + r] = acc[r][b][0];                                               \
        }                                                                                         \
    )                                                                                             \
}

#ifdef __AVX512F__
#define HAVE_F32(yes, no) yes
#else
#define HAVE_F32(yes, no) no
#endif
#ifdef __AVX512BF16__
#define HAVE_BF16(yes, no) yes
#else
#define HAVE_BF16(yes, no) no
#endif
#define LOAD_PS(p) _mm512_loadu_ps(p)
#define LOAD_BH(p) ((__m512bh)_mm512_loadu_si512(p))
#define MAC_F32(acc, w, x, l) acc += (w)[l] * (x)[l]
#define MAC_BF16(acc, w, x, l) acc += from_bf16((w)[2 * (l)]) * from_bf16((x)[2 * (l)]) \
                                     + from_bf16((w)[2 * (l) + 1]) * from_bf16((x)[2 * (l) + 1])
#define FMA_PS(acc, w, x) _mm512_fmadd_ps(w, x, acc)

TILE(tile4x4_f32, 4, 4, float, 16, LOAD_PS, FMA_PS, MAC_F32, F32)
TILE(tile4x1_f32, 4, 1, float, 16, LOAD_PS, FMA_PS, MAC_F32, F32)
TILE(tile4x4_bf16, 4, 4, uint16_t, 32, LOAD_BH, _mm512_dpbf16_ps, MAC_BF16, BF16)
TILE(tile4x1_bf16, 4, 1, uint16_t, 32, LOAD_BH, _mm512_dpbf16_ps, MAC_BF16, BF16)

/* The dot products of rows [o, o + 4*groups) of w with every input row: 4 input rows at a time, then
   one at a time; y[b * y_stride + k] for k < 4*groups. */
#define DOTS(NAME, T, TILE4, TILE1)                                                               \
static inline void NAME(const T *w, int64_t n, int groups, const T *x, int64_t batch, float *y, int64_t y_stride) { \
    int64_t b = 0;                                                                                \
    for (; b + 4 <= batch; b += 4)                                                                \
        for (int q = 0; q < groups; ++q) TILE4(w + 4 * q * n, n, x + b * n, n, y + b * y_stride + 4 * q, y_stride); \
    for (; b < batch; ++b)                                                                        \
        for (int q = 0; q < groups; ++q) TILE1(w + 4 * q * n, n, x + b * n, n, y + b * y_stride + 4 * q, y_stride); \
}

DOTS(dots_f32, float, tile4x4_f32, tile4x1_f32)
DOTS(dots_bf16, uint16_t, tile4x4_bf16, tile4x1_bf16)

/* x (batch, n) fp32 -> x_low (batch, n_pad) in the weights' type, zero-padded (the same rounding as
   torch's .to(torch.bfloat16)). */
#define LOWER(T, STORE)                                                                           \
    _Pragma("omp for schedule(static)")                                                           \
    for (int64_t row = 0; row < batch; ++row)                                                     \
        for (int64_t i = 0; i < n_pad; ++i) x_low[row * n_pad + i] = i < n ? STORE(x[row * n + i]) : 0;

/* y (batch, out) = x W^T + bias for W packed (out_pad, n_pad), bias (out_pad), x (batch, n) fp32;
   x_low (batch, n_pad) is scratch in W's type. */
#define MATVEC(NAME, T, DOT, STORE)                                                               \
void NAME(int64_t batch, int64_t out, int64_t n, int threads, const T *W, const float *bias,      \
          const float *x, T *x_low, float *y) {                                                   \
    const int64_t n_pad = (n + 31) / 32 * 32;                                                     \
    _Pragma("omp parallel num_threads(threads) if (out * n * batch >= 65536)")                    \
    {                                                                                             \
        LOWER(T, STORE)                                                                           \
        _Pragma("omp for schedule(static)")                                                       \
        for (int64_t o = 0; o < out; o += 8) {                                                    \
            float dots[64 * 8];  /* (batch slice, 8) */                                           \
            for (int64_t b0 = 0; b0 < batch; b0 += 64) {                                          \
                int64_t rows = batch - b0 < 64 ? batch - b0 : 64;                                 \
                DOT(W + o * n_pad, n_pad, 2, x_low + b0 * n_pad, rows, dots, 8);                  \
                for (int64_t row = 0; row < rows; ++row)                                          \
                    for (int64_t k = 0; k < 8 && o + k < out; ++k)                                \
                        y[(b0 + row) * out + o + k] = dots[row * 8 + k] + bias[o + k];            \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}

MATVEC(matvec_f32, float, dots_f32, to_f32)
MATVEC(matvec_bf16, uint16_t, dots_bf16, to_bf16)

/* One GRU layer step for generation: h_out (batch, H) from gi (batch, 3H) fp32 input projections, the
   state x (batch, H) fp32 and w_hh packed (3, H_pad, n_pad) gate-major with b_hh (3, H_pad); the maths of
   gru_forward. Units go in blocks of 16: a block's 48 weight rows are read once per step for all rows of
   the batch (then from L2), and its gates run vectorised. */
#define LAYER_STEP(NAME, T, DOT, STORE)                                                           \
void NAME(int64_t batch, int64_t H, int threads, const T *w_hh, const float *b_hh, const float *gi, \
          const float *x, T *x_low, float *h_out) {                                               \
    const int64_t n = H, n_pad = (H + 31) / 32 * 32, H_pad = (H + 15) / 16 * 16;                  \
    _Pragma("omp parallel num_threads(threads) if (H * H * batch >= 65536)")                      \
    {                                                                                             \
        LOWER(T, STORE)                                                                           \
        _Pragma("omp for schedule(static)")                                                       \
        for (int64_t j0 = 0; j0 < H; j0 += 16) {                                                  \
            int64_t width = H - j0 < 16 ? H - j0 : 16;                                            \
            for (int64_t b0 = 0; b0 < batch; b0 += 16) {                                          \
                int64_t rows = batch - b0 < 16 ? batch - b0 : 16;                                 \
                float g[16][3][16];  /* (batch slice, gate, unit) */                              \
                for (int gate = 0; gate < 3; ++gate)                                              \
                    DOT(w_hh + (gate * H_pad + j0) * n_pad, n_pad, 4, x_low + b0 * n_pad, rows, g[0][gate], 48); \
                for (int64_t row = 0; row < rows; ++row) {                                        \
                    const float *restrict gi_r = gi + (b0 + row) * 3 * H + j0, *restrict h_r = x + (b0 + row) * H + j0; \
                    const float *restrict b_r = b_hh + j0, *restrict g_r = g[row][0];             \
                    float *restrict ho_r = h_out + (b0 + row) * H + j0;                           \
                    _Pragma("omp simd simdlen(16)")                                               \
                    for (int64_t k = 0; k < width; ++k) {                                         \
                        float r = 1.0f / (1.0f + expf(-(gi_r[k] + g_r[k] + b_r[k])));             \
                        float z = 1.0f / (1.0f + expf(-(gi_r[H + k] + g_r[16 + k] + b_r[H_pad + k]))); \
                        float nn = tanhf(gi_r[2 * H + k] + r * (g_r[32 + k] + b_r[2 * H_pad + k])); \
                        ho_r[k] = nn + z * (h_r[k] - nn);                                         \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}

LAYER_STEP(gru_layer_step_f32, float, dots_f32, to_f32)
LAYER_STEP(gru_layer_step_bf16, uint16_t, dots_bf16, to_bf16)

/* One generation step of a whole GRU model in one call (each step's Python overhead is what batch 1
   pays most for): gi = table[ids]; per layer, input projection (from the layer below) and GRU step;
   then the output layer. weights: per layer w_ih (unused for the first), b_ih, w_hh, b_hh, all packed,
   then w_out, b_out. state_in, state_out (layers, batch, H); gi (batch, 3H), scratch (batch, pad(H)). */
#define MODEL_STEP(NAME, T, SUFFIX)                                                               \
int NAME(int64_t batch, int64_t layers, int64_t H, int64_t vocab, int threads, const int64_t *ids,  \
         const float *table, void *const *weights, const float *state_in, float *state_out, float *gi, \
         T *scratch, float *logits) {                                                             \
    for (int64_t row = 0; row < batch; ++row)                                                     \
        if (ids[row] < 0 || ids[row] >= vocab) return 1;  /* the caller says which */             \
    for (int64_t row = 0; row < batch; ++row)                                                     \
        for (int64_t i = 0; i < 3 * H; ++i) gi[row * 3 * H + i] = table[ids[row] * 3 * H + i];   \
    for (int64_t layer = 0; layer < layers; ++layer) {                                            \
        void *const *w = weights + 4 * layer;                                                     \
        if (layer)                                                                                \
            matvec_##SUFFIX(batch, 3 * H, H, threads, w[0], w[1], state_out + (layer - 1) * batch * H, scratch, gi); \
        gru_layer_step_##SUFFIX(batch, H, threads, w[2], w[3], gi, state_in + layer * batch * H, scratch, \
                                state_out + layer * batch * H);                                   \
    }                                                                                             \
    matvec_##SUFFIX(batch, vocab, H, threads, weights[4 * layers], weights[4 * layers + 1],       \
                    state_out + (layers - 1) * batch * H, scratch, logits);                       \
    return 0;                                                                                     \
}

MODEL_STEP(gru_model_step_f32, float, f32)
MODEL_STEP(gru_model_step_bf16, uint16_t, bf16)
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


def _cpu_id() -> str:
    from .cpu import cpu_flags

    return platform.machine() + " ".join(sorted(cpu_flags()) or [platform.processor()])


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler (gcc) found")
    key = hashlib.sha256((SOURCE + STEP_SOURCE + " ".join(FLAGS + LINK_FLAGS) + _cpu_id()).encode()).hexdigest()[:16]
    from .corpus import cache_dir

    path = cache_dir() / "kernels" / f"gru-{key}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            # Source and object beside this process's own temporary: DDP ranks (or two runs) building at
            # once on a fresh machine never read each other's half-written files.
            source, obj = tmp.with_suffix(".c"), tmp.with_suffix(".o")
            source.write_text(SOURCE + STEP_SOURCE)
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
        for name in (f"matvec_{suffix}",):
            getattr(library, name).argtypes = [i64, i64, i64, i32] + [ptr] * 5
        getattr(library, f"gru_layer_step_{suffix}").argtypes = [i64, i64, i32] + [ptr] * 6
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



def pack_rows(weight: torch.Tensor, dtype: torch.dtype, groups: int = 1, multiple: int = 8) -> torch.Tensor:
    """weight (groups * rows, n) -> (groups, rows_pad, n_pad) in dtype, zero-padded: rows to `multiple`,
    columns to 32, the layout STEP_SOURCE reads."""
    rows, n = weight.shape[0] // groups, weight.shape[1]
    rows_pad, n_pad = -(-rows // multiple) * multiple, -(-n // 32) * 32
    packed = weight.new_zeros(groups, rows_pad, n_pad, dtype=dtype)
    packed[:, :rows, :n] = weight.detach().view(groups, rows, n)
    return packed


def pack_bias(bias: torch.Tensor, groups: int = 1, multiple: int = 8) -> torch.Tensor:
    rows = bias.shape[0] // groups
    packed = bias.new_zeros(groups, -(-rows // multiple) * multiple, dtype=torch.float32)
    packed[:, :rows] = bias.detach().view(groups, rows)
    return packed


def scratch_width(n: int) -> int:
    """Columns of the x_low scratch for an input of n features."""
    return -(-n // 32) * 32


def matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, x_low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (batch, rows) fp32 = x (batch, n) fp32 @ W.T + b, for weight = pack_rows(W, dtype) and
    bias = pack_bias(b); x_low (batch, scratch_width(n)) is scratch in weight's dtype. See STEP_SOURCE."""
    batch, n = x.shape
    getattr(_library, f"matvec_{_suffix(weight.dtype)}")(batch, out.shape[1], n, torch.get_num_threads(), _ptr(weight),
                                                          _ptr(bias), _ptr(x), _ptr(x_low), _ptr(out))
    return out


def gru_layer_step(gi: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, h_low: torch.Tensor,
                   h_out: torch.Tensor) -> None:
    """h_out (batch, H) = one GRU step from gi (batch, 3H) and h (batch, H), fp32, for
    w_hh = pack_rows(W_hh, dtype, 3, 16) and b_hh = pack_bias(b_hh, 3, 16); h_low (batch, scratch_width(H))
    is scratch in w_hh's dtype. See STEP_SOURCE."""
    batch, hidden = h.shape
    getattr(_library, f"gru_layer_step_{_suffix(w_hh.dtype)}")(batch, hidden, torch.get_num_threads(), _ptr(w_hh), _ptr(b_hh),
                                                                _ptr(gi), _ptr(h), _ptr(h_low), _ptr(h_out))


def model_step(dtype: torch.dtype):
    """The C function of one whole-model generation step (see MODEL_STEP); the caller passes raw pointers."""
    return getattr(_library, f"gru_model_step_{_suffix(dtype)}")

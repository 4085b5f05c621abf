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

#include <immintrin.h>

/* out[b * out_stride + r] = dot(w row r, x row b) for RW weight rows (stride w_stride) and RB input
   rows (stride n): a register tile of RW x RB accumulators, each summed in the one fixed order: chunks
   in sequence into one vector accumulator, whose lanes are then added as a tree. */
#define TILE(NAME, RW, RB, T, STEP, VLOAD, FMA, GENERIC_MAC, HAVE)                                \
static inline void NAME(const T *restrict w, int64_t w_stride, const T *restrict x, int64_t n,    \
                        const int32_t *restrict corr, float *out, int64_t out_stride) {          \
    (void)corr;                                                                                   \
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

/* The same for int8 weights and uint8 inputs: exact integer sums (so any order gives the same), less
   the zero-point correction corr[r] = 128 * sum(w row r). */
#define TILE_I8(NAME, RW, RB)                                                                     \
static inline void NAME(const int8_t *restrict w, int64_t w_stride, const uint8_t *restrict x, int64_t n, \
                        const int32_t *restrict corr, float *out, int64_t out_stride) {          \
    HAVE_I8(                                                                                      \
        __m512i acc[RW][RB];                                                                      \
        for (int r = 0; r < RW; ++r) for (int b = 0; b < RB; ++b) acc[r][b] = _mm512_setzero_si512(); \
        for (int64_t i = 0; i < n; i += 64) {                                                     \
            for (int r = 0; r < RW; ++r) {                                                        \
                __m512i wv = _mm512_loadu_si512(w + r * w_stride + i);                            \
                for (int b = 0; b < RB; ++b)                                                      \
                    acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], _mm512_loadu_si512(x + b * n + i), wv); \
            }                                                                                     \
        }                                                                                         \
        for (int r = 0; r < RW; ++r) for (int b = 0; b < RB; ++b)                                 \
            out[b * out_stride + r] = (float)(_mm512_reduce_add_epi32(acc[r][b]) - corr[r]);      \
    ,                                                                                             \
        int32_t acc[RW][RB] = {{0}};                                                              \
        for (int64_t i = 0; i < n; ++i)                                                           \
            for (int r = 0; r < RW; ++r) for (int b = 0; b < RB; ++b)                             \
                acc[r][b] += (int32_t)x[b * n + i] * (int32_t)w[r * w_stride + i];                \
        for (int r = 0; r < RW; ++r) for (int b = 0; b < RB; ++b)                                 \
            out[b * out_stride + r] = (float)(acc[r][b] - corr[r]);                               \
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
#ifdef __AVX512VNNI__
#define HAVE_I8(yes, no) yes
#else
#define HAVE_I8(yes, no) no
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
TILE_I8(tile4x4_i8, 4, 4)
TILE_I8(tile4x1_i8, 4, 1)

/* The dot products of 4*groups consecutive weight rows with every input row: 4 input rows at a time,
   then one at a time; y[b * y_stride + k] for k < 4*groups. */
#define DOTS(NAME, T, TX, TILE4, TILE1)                                                           \
static inline void NAME(const T *w, int64_t n, int groups, const TX *x, int64_t batch, const int32_t *corr, \
                        float *y, int64_t y_stride) {                                             \
    int64_t b = 0;                                                                                \
    for (; b + 4 <= batch; b += 4)                                                                \
        for (int q = 0; q < groups; ++q)                                                          \
            TILE4(w + 4 * q * n, n, x + b * n, n, corr ? corr + 4 * q : 0, y + b * y_stride + 4 * q, y_stride); \
    for (; b < batch; ++b)                                                                        \
        for (int q = 0; q < groups; ++q)                                                          \
            TILE1(w + 4 * q * n, n, x + b * n, n, corr ? corr + 4 * q : 0, y + b * y_stride + 4 * q, y_stride); \
}

DOTS(dots_f32, float, float, tile4x4_f32, tile4x1_f32)
DOTS(dots_bf16, uint16_t, uint16_t, tile4x4_bf16, tile4x1_bf16)
DOTS(dots_i8, int8_t, uint8_t, tile4x4_i8, tile4x1_i8)

/* Inputs in the weights' terms: fp32 as is, bf16 rounded to nearest even (as torch's .to(bfloat16)),
   int8's uint8 = round(127 x) + 128 for x clamped to [-1, 1] (a GRU's state never leaves it). */
static inline uint8_t to_u8(float v) {
    float c = v < 1.0f ? v : 1.0f;
    c = c > -1.0f ? c : -1.0f;
    return (uint8_t)(int)(nearbyintf(c * 127.0f) + 128.0f);
}
#define PAD_f32 32
#define PAD_bf16 32
#define PAD_i8 64

/* The layer's output for unit o from its dot product: scale (int8) and bias. */
#define FINISH_f32(dot, o) ((dot) + bias[o])
#define FINISH_bf16(dot, o) ((dot) + bias[o])
#define FINISH_i8(dot, o) ((dot) * scale[o] + bias[o])

/* x (batch, n) fp32 -> x_low (batch, n_pad) in the weights' input type, zero-padded. */
#define LOWER(TX, STORE, ZERO)                                                                    \
    _Pragma("omp for schedule(static)")                                                           \
    for (int64_t row = 0; row < batch; ++row)                                                     \
        for (int64_t i = 0; i < n_pad; ++i) x_low[row * n_pad + i] = i < n ? STORE(x[row * n + i]) : ZERO;

/* y (batch, out) = x W^T + bias for W packed (out_pad, n_pad), bias/scale/corr (out_pad), x (batch, n)
   fp32; x_low (batch, n_pad) is scratch. */
#define MATVEC(S, T, TX, STORE, ZERO)                                                             \
void matvec_##S(int64_t batch, int64_t out, int64_t n, int threads, const T *W, const float *bias, \
                const float *scale, const int32_t *corr, const float *x, TX *x_low, float *y) {   \
    (void)scale;                                                                                  \
    const int64_t n_pad = (n + PAD_##S - 1) / PAD_##S * PAD_##S;                                  \
    _Pragma("omp parallel num_threads(threads) if (out * n * batch >= 65536)")                    \
    {                                                                                             \
        LOWER(TX, STORE, ZERO)                                                                    \
        _Pragma("omp for schedule(static)")                                                       \
        for (int64_t o = 0; o < out; o += 8) {                                                    \
            float dots[64 * 8];  /* (batch slice, 8) */                                           \
            for (int64_t b0 = 0; b0 < batch; b0 += 64) {                                          \
                int64_t rows = batch - b0 < 64 ? batch - b0 : 64;                                 \
                dots_##S(W + o * n_pad, n_pad, 2, x_low + b0 * n_pad, rows, corr ? corr + o : 0, dots, 8); \
                for (int64_t row = 0; row < rows; ++row)                                          \
                    for (int64_t k = 0; k < 8 && o + k < out; ++k)                                \
                        y[(b0 + row) * out + o + k] = FINISH_##S(dots[row * 8 + k], o + k);       \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}

MATVEC(f32, float, float, to_f32, 0.0f)
MATVEC(bf16, uint16_t, uint16_t, to_bf16, 0)
MATVEC(i8, int8_t, uint8_t, to_u8, 128)

/* One GRU layer step: h_out (batch, H) from gi (batch, 3H) fp32 input projections, the state x (batch, H)
   fp32 and w_hh packed (3, H_pad, n_pad) gate-major with b_hh, scale, corr (3, H_pad); the maths of
   kernels.py's gru_forward. Units go in blocks of 16: a block's 48 weight rows are read once per step
   for up to 16 rows of the batch (from L1/L2 after the first), and its gates run vectorised. */
#define LAYER_STEP(S, T, TX, STORE, ZERO)                                                         \
void gru_layer_step_##S(int64_t batch, int64_t H, int threads, const T *w_hh, const float *b_hh,  \
                        const float *scale, const int32_t *corr, const float *gi, const float *x, \
                        TX *x_low, float *h_out) {                                                \
    const int64_t n = H, n_pad = (H + PAD_##S - 1) / PAD_##S * PAD_##S, H_pad = (H + 15) / 16 * 16; \
    const float *bias = b_hh;                                                                     \
    (void)scale;                                                                                  \
    _Pragma("omp parallel num_threads(threads) if (H * H * batch >= 65536)")                      \
    {                                                                                             \
        LOWER(TX, STORE, ZERO)                                                                    \
        _Pragma("omp for schedule(static)")                                                       \
        for (int64_t j0 = 0; j0 < H; j0 += 16) {                                                  \
            int64_t width = H - j0 < 16 ? H - j0 : 16;                                            \
            for (int64_t b0 = 0; b0 < batch; b0 += 16) {                                          \
                int64_t rows = batch - b0 < 16 ? batch - b0 : 16;                                 \
                float g[16][3][16];  /* (batch slice, gate, unit) */                              \
                for (int gate = 0; gate < 3; ++gate)                                              \
                    dots_##S(w_hh + (gate * H_pad + j0) * n_pad, n_pad, 4, x_low + b0 * n_pad, rows, \
                             corr ? corr + gate * H_pad + j0 : 0, g[0][gate], 48);                \
                for (int64_t row = 0; row < rows; ++row) {                                        \
                    const float *restrict gi_r = gi + (b0 + row) * 3 * H + j0, *restrict h_r = x + (b0 + row) * H + j0; \
                    const float *restrict g_r = g[row][0];                                        \
                    float *restrict ho_r = h_out + (b0 + row) * H + j0;                           \
                    _Pragma("omp simd simdlen(16)")                                               \
                    for (int64_t k = 0; k < width; ++k) {                                         \
                        float r = 1.0f / (1.0f + expf(-(gi_r[k] + FINISH_##S(g_r[k], j0 + k)))); \
                        float z = 1.0f / (1.0f + expf(-(gi_r[H + k] + FINISH_##S(g_r[16 + k], H_pad + j0 + k)))); \
                        float nn = tanhf(gi_r[2 * H + k] + r * FINISH_##S(g_r[32 + k], 2 * H_pad + j0 + k)); \
                        ho_r[k] = nn + z * (h_r[k] - nn);                                         \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}

LAYER_STEP(f32, float, float, to_f32, 0.0f)
LAYER_STEP(bf16, uint16_t, uint16_t, to_bf16, 0)
LAYER_STEP(i8, int8_t, uint8_t, to_u8, 128)

/* One generation step of a whole GRU model in one call (each step's Python overhead is what batch 1
   pays most for): gi = table[ids]; per layer, the input projection (from the layer below) and the GRU
   step; then the output layer. weights: per layer w_ih (unused for the first), b_ih, scale_ih, corr_ih,
   w_hh, b_hh, scale_hh, corr_hh, all packed; then w_out, b_out, scale_out, corr_out. state_in,
   state_out (layers, batch, H); gi (batch, 3H), scratch (batch, n_pad(H)). Returns 1 for an id outside
   the vocabulary (nothing computed), else 0. */
#define MODEL_STEP(S, T, TX)                                                                      \
int gru_model_step_##S(int64_t batch, int64_t layers, int64_t H, int64_t vocab, int threads, const int64_t *ids, \
                       const float *table, void *const *weights, const float *state_in, float *state_out, \
                       float *gi, TX *scratch, float *logits) {                                   \
    for (int64_t row = 0; row < batch; ++row)                                                     \
        if (ids[row] < 0 || ids[row] >= vocab) return 1;                                          \
    for (int64_t row = 0; row < batch; ++row)                                                     \
        for (int64_t i = 0; i < 3 * H; ++i) gi[row * 3 * H + i] = table[ids[row] * 3 * H + i];   \
    for (int64_t layer = 0; layer < layers; ++layer) {                                            \
        void *const *w = weights + 8 * layer;                                                     \
        if (layer)                                                                                \
            matvec_##S(batch, 3 * H, H, threads, w[0], w[1], w[2], w[3], state_out + (layer - 1) * batch * H, scratch, gi); \
        gru_layer_step_##S(batch, H, threads, w[4], w[5], w[6], w[7], gi, state_in + layer * batch * H, scratch, \
                           state_out + layer * batch * H);                                        \
    }                                                                                             \
    void *const *w = weights + 8 * layers;                                                        \
    matvec_##S(batch, vocab, H, threads, w[0], w[1], w[2], w[3], state_out + (layers - 1) * batch * H, scratch, logits); \
    return 0;                                                                                     \
}

MODEL_STEP(f32, float, float)
MODEL_STEP(bf16, uint16_t, uint16_t)
MODEL_STEP(i8, int8_t, uint8_t)

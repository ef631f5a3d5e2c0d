/* Depthwise 3x3 stride-1 planes for conv_direct.pyx (one input channel per output channel).
 *
 * The general kernel of conv_direct.pyx does one axpy per tap per output row: nine passes
 * over each 28-wide row, a call and a range computation each. Here a plane is first copied
 * into a zero-bordered buffer (cnn_dw3_pad: the padding made explicit), so that every
 * output reads its nine taps inside the buffer and each row is one branch-free vector loop
 * with the nine weights in registers:
 *
 * - cnn_dw3_plane: y[oh, ow] (=, or += with `accumulate`) bias + sum_{i,j} w[i,j] *
 *   xp[oh + i, ow + j] (sum order: CNN_DW3_TAPS). The input gradient of a 3x3 stride-1
 *   convolution is this kernel again: dy, padded by 2 - p, correlated with the flipped
 *   kernel.
 * - cnn_dw3_wgrad_plane: the nine sums sum_{oh,ow} dy[oh, ow] * xp[oh + i, ow + j] of one
 *   (image, channel) plane, in lane partial sums held in registers over the whole plane and
 *   added in double at the end: a fixed order, the same bits with or without OpenMP. */
#ifndef CNNCORE_DIRECT_H
#define CNNCORE_DIRECT_H

#include <stddef.h>
#include <string.h>

#ifdef _OPENMP
#define CNN_DW_SIMD _Pragma("omp simd")
#else
#define CNN_DW_SIMD
#endif

static inline ptrdiff_t cnn_dw_clip(ptrdiff_t v, ptrdiff_t lo, ptrdiff_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* The nine taps of the output at column k (input rows a, b, c): each row's three taps
 * summed left to right, then the three rows. Three short chains rather than one of nine
 * additions: no FMA in portable x86-64 code, and the 9-deep chain measured ~15% slower. */
#define CNN_DW3_TAPS(k)                                                                   \
    (((w0 * a[k] + w1 * a[(k) + 1]) + w2 * a[(k) + 2])                                   \
     + ((w3 * b[k] + w4 * b[(k) + 1]) + w5 * b[(k) + 2])                                 \
     + ((w6 * c[k] + w7 * c[(k) + 1]) + w8 * c[(k) + 2]))

/* The lane sums of cnn_dw3_wgrad_plane: nine 16-byte vectors held in registers. GCC and
 * clang get them as vector-extension types (the auto-vectoriser keeps nine lane arrays in
 * memory and shuffles); other compilers as plain arrays, with the same sums per lane. */
#if defined(__GNUC__) || defined(__clang__)
typedef float cnn_dw_vf __attribute__((vector_size(16)));
typedef double cnn_dw_vd __attribute__((vector_size(16)));
static inline cnn_dw_vf cnn_dw_load_f(const float *p) { cnn_dw_vf v; memcpy(&v, p, 16); return v; }
static inline cnn_dw_vd cnn_dw_load_d(const double *p) { cnn_dw_vd v; memcpy(&v, p, 16); return v; }
#define CNN_DW_LANE_DECL(T, SUF, s)                                                        \
    cnn_dw_v##SUF s##0 = {0}, s##1 = {0}, s##2 = {0}, s##3 = {0}, s##4 = {0}, s##5 = {0},  \
                  s##6 = {0}, s##7 = {0}, s##8 = {0}
#define CNN_DW_LANE_STEP(T, SUF, s, q) do {                                                \
        const cnn_dw_v##SUF d = cnn_dw_load_##SUF(g + (q));                                 \
        s##0 += d * cnn_dw_load_##SUF(a + (q)); s##1 += d * cnn_dw_load_##SUF(a + (q) + 1); \
        s##2 += d * cnn_dw_load_##SUF(a + (q) + 2); s##3 += d * cnn_dw_load_##SUF(b + (q)); \
        s##4 += d * cnn_dw_load_##SUF(b + (q) + 1); s##5 += d * cnn_dw_load_##SUF(b + (q) + 2); \
        s##6 += d * cnn_dw_load_##SUF(c + (q)); s##7 += d * cnn_dw_load_##SUF(c + (q) + 1); \
        s##8 += d * cnn_dw_load_##SUF(c + (q) + 2);                                        \
    } while (0)
#define CNN_DW_LANE_STORE(T, SUF, s, lanes) do {                                           \
        memcpy(lanes[0], &s##0, 16); memcpy(lanes[1], &s##1, 16); memcpy(lanes[2], &s##2, 16); \
        memcpy(lanes[3], &s##3, 16); memcpy(lanes[4], &s##4, 16); memcpy(lanes[5], &s##5, 16); \
        memcpy(lanes[6], &s##6, 16); memcpy(lanes[7], &s##7, 16); memcpy(lanes[8], &s##8, 16); \
    } while (0)
#else
#define CNN_DW_LANE_DECL(T, SUF, s) T s[9][16 / sizeof(T)] = {{0}}
#define CNN_DW_LANE_STEP(T, SUF, s, q) do {                                                \
        for (int k = 0; k < L; ++k) {                                                      \
            const T d = g[(q) + k];                                                        \
            const ptrdiff_t e = (q) + k;                                                   \
            s[0][k] += d * a[e]; s[1][k] += d * a[e + 1]; s[2][k] += d * a[e + 2];         \
            s[3][k] += d * b[e]; s[4][k] += d * b[e + 1]; s[5][k] += d * b[e + 2];         \
            s[6][k] += d * c[e]; s[7][k] += d * c[e + 1]; s[8][k] += d * c[e + 2];         \
        }                                                                                  \
    } while (0)
#define CNN_DW_LANE_STORE(T, SUF, s, lanes) memcpy(lanes, s, sizeof(lanes))
#endif

#define CNN_DEFINE_DW3(T, SUF)                                                             \
    /* xp (Hp x Wp) = x (H x W) shifted down by ph and right by pw, zero outside x. */     \
    static inline void cnn_dw3_pad_##SUF(T *restrict xp, const T *restrict x, ptrdiff_t H, \
                                         ptrdiff_t W, ptrdiff_t Hp, ptrdiff_t Wp,          \
                                         ptrdiff_t ph, ptrdiff_t pw) {                     \
        const ptrdiff_t lo = cnn_dw_clip(pw, 0, Wp), hi = cnn_dw_clip(W + pw, lo, Wp);     \
        for (ptrdiff_t r = 0; r < Hp; ++r) {                                               \
            T *restrict d = xp + r * Wp;                                                   \
            const ptrdiff_t ih = r - ph;                                                   \
            if (ih < 0 || ih >= H) { memset(d, 0, Wp * sizeof(T)); continue; }            \
            const T *restrict s = x + ih * W - pw;                                         \
            for (ptrdiff_t q = 0; q < lo; ++q) d[q] = 0;                                   \
            CNN_DW_SIMD for (ptrdiff_t q = lo; q < hi; ++q) d[q] = s[q];                   \
            for (ptrdiff_t q = hi; q < Wp; ++q) d[q] = 0;                                  \
        }                                                                                  \
    }                                                                                      \
    /* y (Ho x Wo) = bias + (or, with `accumulate`, y +) the 3x3 correlation of the padded  \
     * plane xp ((Ho + 2) x (Wo + 2)) with w. */                                           \
    static inline void cnn_dw3_plane_##SUF(T *restrict y, const T *restrict xp,            \
                                           const T *restrict w, T bias, int accumulate,    \
                                           ptrdiff_t Ho, ptrdiff_t Wo) {                   \
        const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5],          \
                w6 = w[6], w7 = w[7], w8 = w[8];                                           \
        const ptrdiff_t Wp = Wo + 2;                                                       \
        for (ptrdiff_t oh = 0; oh < Ho; ++oh) {                                            \
            const T *restrict a = xp + oh * Wp, *restrict b = a + Wp, *restrict c = b + Wp; \
            T *restrict yr = y + oh * Wo;                                                  \
            if (accumulate) {                                                              \
                CNN_DW_SIMD for (ptrdiff_t ow = 0; ow < Wo; ++ow)                          \
                    yr[ow] += CNN_DW3_TAPS(ow);                                            \
            } else {                                                                       \
                CNN_DW_SIMD for (ptrdiff_t ow = 0; ow < Wo; ++ow)                          \
                    yr[ow] = bias + CNN_DW3_TAPS(ow);                                      \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    /* out[3*i + j] = sum_{oh, ow} dy[oh, ow] * xp[oh + i, ow + j] (xp padded as above):    \
     * L = 16 / sizeof(T) lane sums per tap (lane k takes the ow = k mod L of the vector    \
     * part of each row), the rest of each row in a scalar, added in double at the end. */ \
    static inline void cnn_dw3_wgrad_plane_##SUF(double *restrict out, const T *restrict dy, \
                                                 const T *restrict xp, ptrdiff_t Ho,       \
                                                 ptrdiff_t Wo) {                           \
        enum { L = 16 / sizeof(T) };                                                       \
        CNN_DW_LANE_DECL(T, SUF, s);                                                       \
        T r[9] = {0};                                                                      \
        const ptrdiff_t Wp = Wo + 2, Wv = Wo - Wo % L;                                     \
        for (ptrdiff_t oh = 0; oh < Ho; ++oh) {                                            \
            const T *restrict g = dy + oh * Wo;                                            \
            const T *restrict a = xp + oh * Wp, *restrict b = a + Wp, *restrict c = b + Wp; \
            for (ptrdiff_t q = 0; q < Wv; q += L) CNN_DW_LANE_STEP(T, SUF, s, q);          \
            for (ptrdiff_t q = Wv; q < Wo; ++q) {                                          \
                const T d = g[q];                                                          \
                r[0] += d * a[q]; r[1] += d * a[q + 1]; r[2] += d * a[q + 2];              \
                r[3] += d * b[q]; r[4] += d * b[q + 1]; r[5] += d * b[q + 2];              \
                r[6] += d * c[q]; r[7] += d * c[q + 1]; r[8] += d * c[q + 2];              \
            }                                                                              \
        }                                                                                  \
        T lanes[9][L];                                                                     \
        CNN_DW_LANE_STORE(T, SUF, s, lanes);                                               \
        for (int t = 0; t < 9; ++t) {                                                      \
            double u = r[t];                                                               \
            for (int k = 0; k < L; ++k) u += lanes[t][k];                                  \
            out[t] = u;                                                                    \
        }                                                                                  \
    }

CNN_DEFINE_DW3(float, f)
CNN_DEFINE_DW3(double, d)

#undef CNN_DEFINE_DW3
#undef CNN_DW3_TAPS

#endif /* CNNCORE_DIRECT_H */

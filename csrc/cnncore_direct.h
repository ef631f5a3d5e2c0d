/* Depthwise 3x3 planes, stride 1 or 2, for conv_direct.pyx (one input channel per output
 * channel).
 *
 * The general kernel of conv_direct.pyx does one axpy per tap per output row: nine passes
 * over each 28-wide row, a call and a range computation each. Here a plane is first copied
 * into a zero-bordered buffer (cnn_dw3_pad: the padding made explicit; for stride 2 each
 * row is stored as its even columns, then its odd ones, so that the taps of consecutive
 * outputs are contiguous), so that every output reads its nine taps inside the buffer and
 * each row is one branch-free vector loop with the nine weights in registers:
 *
 * - cnn_dw3_plane: y[oh, ow] (=, or += with `accumulate`) bias + sum_{i,j} w[i,j] *
 *   x[s*oh + i - ph, s*ow + j - pw] (sum order: CNN_DW3_TAPS). The input gradient of a 3x3
 *   stride-1 convolution is this kernel again: dy, padded by 2 - p, correlated with the
 *   flipped kernel.
 * - cnn_dw3_dx_s2: the input gradient for stride 2, by the parity of the padded row and
 *   column (two or one kernel rows, two or one kernel columns).
 * - cnn_dw3_wgrad_plane: the nine sums sum_{oh,ow} dy[oh, ow] * x[s*oh + i - ph,
 *   s*ow + j - pw] of one (image, channel) plane, in lane partial sums held in registers over
 *   the whole plane and added in double at the end: a fixed order, the same bits with or
 *   without OpenMP. */
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
    (((w0 * a[k] + w1 * a[(k) + o1]) + w2 * a[(k) + o2])                                 \
     + ((w3 * b[k] + w4 * b[(k) + o1]) + w5 * b[(k) + o2])                               \
     + ((w6 * c[k] + w7 * c[(k) + o1]) + w8 * c[(k) + o2]))

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
#define CNN_DW_LANE_STEP(T, SUF, s, q, g, a, b, c) do {                                    \
        const cnn_dw_v##SUF d = cnn_dw_load_##SUF(g + (q));                                 \
        s##0 += d * cnn_dw_load_##SUF(a + (q)); s##1 += d * cnn_dw_load_##SUF(a + (q) + o1); \
        s##2 += d * cnn_dw_load_##SUF(a + (q) + o2); s##3 += d * cnn_dw_load_##SUF(b + (q)); \
        s##4 += d * cnn_dw_load_##SUF(b + (q) + o1); s##5 += d * cnn_dw_load_##SUF(b + (q) + o2); \
        s##6 += d * cnn_dw_load_##SUF(c + (q)); s##7 += d * cnn_dw_load_##SUF(c + (q) + o1); \
        s##8 += d * cnn_dw_load_##SUF(c + (q) + o2);                                       \
    } while (0)
#define CNN_DW_LANE_STORE(T, SUF, s, lanes) do {                                           \
        memcpy(lanes[0], &s##0, 16); memcpy(lanes[1], &s##1, 16); memcpy(lanes[2], &s##2, 16); \
        memcpy(lanes[3], &s##3, 16); memcpy(lanes[4], &s##4, 16); memcpy(lanes[5], &s##5, 16); \
        memcpy(lanes[6], &s##6, 16); memcpy(lanes[7], &s##7, 16); memcpy(lanes[8], &s##8, 16); \
    } while (0)
#else
#define CNN_DW_LANE_DECL(T, SUF, s) T s[9][16 / sizeof(T)] = {{0}}
#define CNN_DW_LANE_STEP(T, SUF, s, q, g, a, b, c) do {                                    \
        for (int k = 0; k < L; ++k) {                                                      \
            const T d = g[(q) + k];                                                        \
            const ptrdiff_t e = (q) + k;                                                   \
            s[0][k] += d * a[e]; s[1][k] += d * a[e + o1]; s[2][k] += d * a[e + o2];       \
            s[3][k] += d * b[e]; s[4][k] += d * b[e + o1]; s[5][k] += d * b[e + o2];       \
            s[6][k] += d * c[e]; s[7][k] += d * c[e + o1]; s[8][k] += d * c[e + o2];       \
        }                                                                                  \
    } while (0)
#define CNN_DW_LANE_STORE(T, SUF, s, lanes) memcpy(lanes, s, sizeof(lanes))
#endif

/* Row length Wq of the padded plane, and where in a row the taps j = 1, 2 of output column
 * ow are, relative to tap 0 at ow: stride 1, the next two columns; stride 2 (rows split into
 * Wo + 1 even columns, then Wo odd ones), column 2*ow + 1 (odd part) and 2*ow + 2. */
#define CNN_DW_TAP_OFFSETS                                                                 \
    const ptrdiff_t Wq = s * (Wo - 1) + 3, o1 = s == 1 ? 1 : Wo + 1, o2 = s == 1 ? 2 : 1

/* The columns [Wv, Wo) of a weight-gradient row, one by one into r[9]. */
#define CNN_DW_WGRAD_TAIL(T, g, a, b, c)                                                   \
    for (ptrdiff_t q = Wv; q < Wo; ++q) {                                                  \
        const T d = g[q];                                                                  \
        r[0] += d * a[q]; r[1] += d * a[q + o1]; r[2] += d * a[q + o2];                    \
        r[3] += d * b[q]; r[4] += d * b[q + o1]; r[5] += d * b[q + o2];                    \
        r[6] += d * c[q]; r[7] += d * c[q + o1]; r[8] += d * c[q + o2];                    \
    }

#define CNN_DEFINE_DW3(T, SUF)                                                             \
    /* xp = x (H x W) after ph rows and pw columns of zeros, zero beyond x too: the        \
     * s*(Ho - 1) + 3 rows and Wq = s*(Wo - 1) + 3 columns the outputs read. Stride 2 keeps \
     * each row as its even columns then its odd ones (CNN_DW_TAP_OFFSETS). */             \
    static inline void cnn_dw3_pad_##SUF(T *restrict xp, const T *restrict x, ptrdiff_t H, \
                                         ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo,          \
                                         ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t s) {        \
        const ptrdiff_t Hp = s * (Ho - 1) + 3, Wq = s * (Wo - 1) + 3;                      \
        for (ptrdiff_t r = 0; r < Hp; ++r) {                                               \
            T *restrict d = xp + r * Wq;                                                   \
            const ptrdiff_t ih = r - ph;                                                   \
            if (ih < 0 || ih >= H) { memset(d, 0, Wq * sizeof(T)); continue; }            \
            for (ptrdiff_t p = 0; p < s; ++p) {                                            \
                /* dp[q] = x[ih, s*q + p - pw] for q in [0, n) */                          \
                T *restrict dp = d + (p ? Wo + 1 : 0);                                     \
                const ptrdiff_t n = s == 1 ? Wq : (p ? Wo : Wo + 1), v = pw - p;           \
                const ptrdiff_t lo = cnn_dw_clip(v <= 0 ? 0 : (v + s - 1) / s, 0, n);      \
                const ptrdiff_t hi = cnn_dw_clip(W - 1 + v < 0 ? 0 : (W - 1 + v) / s + 1, lo, n); \
                const T *restrict src = x + ih * W - v;                                    \
                for (ptrdiff_t q = 0; q < lo; ++q) dp[q] = 0;                              \
                if (s == 1) { CNN_DW_SIMD for (ptrdiff_t q = lo; q < hi; ++q) dp[q] = src[q]; } \
                else { CNN_DW_SIMD for (ptrdiff_t q = lo; q < hi; ++q) dp[q] = src[2 * q]; } \
                for (ptrdiff_t q = hi; q < n; ++q) dp[q] = 0;                              \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    /* y (Ho x Wo) = bias + (or, with `accumulate`, y +) the 3x3 stride-s correlation of   \
     * the padded plane xp with w. */                                                      \
    static inline void cnn_dw3_plane_##SUF(T *restrict y, const T *restrict xp,            \
                                           const T *restrict w, T bias, int accumulate,    \
                                           ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t s) {      \
        const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5],          \
                w6 = w[6], w7 = w[7], w8 = w[8];                                           \
        CNN_DW_TAP_OFFSETS;                                                                \
        for (ptrdiff_t oh = 0; oh < Ho; ++oh) {                                            \
            const T *restrict a = xp + s * oh * Wq, *restrict b = a + Wq, *restrict c = b + Wq; \
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
    /* out[3*i + j] = sum_{oh, ow} dy[oh, ow] * x[s*oh + i, s*ow + j] (xp padded as above): \
     * L = 16 / sizeof(T) lane sums per tap (lane k takes the ow = k mod L of the vector    \
     * part of each row), the rest of each row in a scalar, added in double at the end. */ \
    static inline void cnn_dw3_wgrad_plane_##SUF(double *restrict out, const T *restrict dy, \
                                                 const T *restrict xp, ptrdiff_t Ho,       \
                                                 ptrdiff_t Wo, ptrdiff_t s) {              \
        enum { L = 16 / sizeof(T) };                                                       \
        CNN_DW_LANE_DECL(T, SUF, acc);                                                     \
        T r[9] = {0};                                                                      \
        CNN_DW_TAP_OFFSETS;                                                                \
        const ptrdiff_t Wv = Wo - Wo % L;                                                  \
        /* two output rows per pass (stride 1: they share two input rows' loads); per lane, \
         * row oh's term before row oh + 1's */                                             \
        ptrdiff_t oh = 0;                                                                  \
        for (; oh + 1 < Ho; oh += 2) {                                                     \
            const T *restrict g = dy + oh * Wo, *restrict g2 = g + Wo;                     \
            const T *restrict a = xp + s * oh * Wq, *restrict b = a + Wq, *restrict c = b + Wq; \
            const T *restrict a2 = a + s * Wq, *restrict b2 = a2 + Wq, *restrict c2 = b2 + Wq; \
            for (ptrdiff_t q = 0; q < Wv; q += L) {                                        \
                CNN_DW_LANE_STEP(T, SUF, acc, q, g, a, b, c);                              \
                CNN_DW_LANE_STEP(T, SUF, acc, q, g2, a2, b2, c2);                          \
            }                                                                              \
            CNN_DW_WGRAD_TAIL(T, g, a, b, c);                                              \
            CNN_DW_WGRAD_TAIL(T, g2, a2, b2, c2);                                          \
        }                                                                                  \
        if (oh < Ho) {                                                                     \
            const T *restrict g = dy + oh * Wo;                                            \
            const T *restrict a = xp + s * oh * Wq, *restrict b = a + Wq, *restrict c = b + Wq; \
            for (ptrdiff_t q = 0; q < Wv; q += L) CNN_DW_LANE_STEP(T, SUF, acc, q, g, a, b, c); \
            CNN_DW_WGRAD_TAIL(T, g, a, b, c);                                              \
        }                                                                                  \
        T lanes[9][L];                                                                     \
        CNN_DW_LANE_STORE(T, SUF, acc, lanes);                                             \
        for (int t = 0; t < 9; ++t) {                                                      \
            double u = r[t];                                                               \
            for (int k = 0; k < L; ++k) u += lanes[t][k];                                  \
            out[t] = u;                                                                    \
        }                                                                                  \
    }                                                                                      \
    /* dx (H x W) =, or += with `accumulate`, the input gradient of a stride-2 3x3 kernel.  \
     * gp: dy padded by one zero row and column on each side ((Ho + 2) x (Wo + 2)); eo:      \
     * 2 * (W / 2 + pw / 2 + 2) scratch elements. dx[ih, iw] is a sum over the taps (i, j)  \
     * with R - i and C - j even (R = ih + ph, C = iw + pw): the even R take kernel rows 0   \
     * and 2 (dy rows R/2 and R/2 - 1), the odd R row 1; in a row, the even C take columns 0 \
     * and 2, the odd C column 1. So each dx row is two contiguous vector loops, its even    \
     * (e) and odd (o) padded columns, then interleaved into dx. */                          \
    static inline void cnn_dw3_dx_s2_##SUF(T *restrict dx, const T *restrict gp,             \
                                           const T *restrict w, int accumulate, ptrdiff_t H, \
                                           ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo,          \
                                           ptrdiff_t ph, ptrdiff_t pw, T *restrict eo) {     \
        const ptrdiff_t Wg = Wo + 2, n = W / 2 + pw / 2 + 2;                                 \
        const ptrdiff_t m = n < Wo + 1 ? n : Wo + 1;  /* e[q], o[q] past Wo are zero */      \
        T *restrict e = eo, *restrict o = eo + n;                                            \
        for (ptrdiff_t q = m; q < n; ++q) e[q] = o[q] = 0;                                   \
        for (ptrdiff_t ih = 0; ih < H; ++ih) {                                               \
            const ptrdiff_t R = ih + ph, r = R / 2;                                          \
            /* gp row r + 1 holds dy row r; past the bottom, row 0 (zeros) */                \
            const T *restrict g = gp + (r + 1 <= Ho + 1 ? r + 1 : 0) * Wg;                   \
            if (R % 2 == 0) {                                                                \
                const T *restrict h = gp + (r <= Ho + 1 ? r : 0) * Wg;  /* dy row r - 1 */   \
                const T a0 = w[0], a1 = w[1], a2 = w[2], c0 = w[6], c1 = w[7], c2 = w[8];    \
                CNN_DW_SIMD for (ptrdiff_t q = 0; q < m; ++q) {                              \
                    e[q] = (a0 * g[q + 1] + a2 * g[q]) + (c0 * h[q + 1] + c2 * h[q]);        \
                    o[q] = a1 * g[q + 1] + c1 * h[q + 1];                                    \
                }                                                                            \
            } else {                                                                         \
                const T b0 = w[3], b1 = w[4], b2 = w[5];                                     \
                CNN_DW_SIMD for (ptrdiff_t q = 0; q < m; ++q) {                              \
                    e[q] = b0 * g[q + 1] + b2 * g[q];                                        \
                    o[q] = b1 * g[q + 1];                                                    \
                }                                                                            \
            }                                                                                \
            /* dx[ih, iw] = (C even ? e : o)[C / 2]: pairs (iw, iw + 1) from (u[k], v[k]) */ \
            const T *restrict u = pw % 2 ? o + pw / 2 : e + pw / 2;                          \
            const T *restrict v = pw % 2 ? e + pw / 2 + 1 : o + pw / 2;                      \
            T *restrict d = dx + ih * W;                                                     \
            const ptrdiff_t W2 = W / 2;                                                      \
            if (accumulate) {                                                                \
                CNN_DW_SIMD for (ptrdiff_t k = 0; k < W2; ++k) {                             \
                    d[2 * k] += u[k]; d[2 * k + 1] += v[k];                                  \
                }                                                                            \
                if (W % 2) d[W - 1] += u[W2];                                                \
            } else {                                                                         \
                CNN_DW_SIMD for (ptrdiff_t k = 0; k < W2; ++k) {                             \
                    d[2 * k] = u[k]; d[2 * k + 1] = v[k];                                    \
                }                                                                            \
                if (W % 2) d[W - 1] = u[W2];                                                 \
            }                                                                                \
        }                                                                                    \
    }

CNN_DEFINE_DW3(float, f)
CNN_DEFINE_DW3(double, d)

#undef CNN_DEFINE_DW3
#undef CNN_DW3_TAPS
#undef CNN_DW_TAP_OFFSETS
#undef CNN_DW_WGRAD_TAIL

#endif /* CNNCORE_DIRECT_H */

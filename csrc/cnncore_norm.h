/* C helpers of the BatchNorm kernels (src/cnncore/_kernels/norm.pyx) and of the fused
 * inference epilogues (add + ReLU, in-place ReLU).
 *
 * One channel of an (N, C, S) array is n strips of `len` contiguous values, strip i at
 * x + i * stride. The reductions accumulate in CNN_BN_LANES double partial sums (lane k takes
 * the elements j of each strip with j % CNN_BN_LANES == k), which the compiler vectorises
 * without reassociating anything, and add the lanes in a fixed order at the end: the result
 * depends on the channel's values only, never on which thread ran it. */
#ifndef CNNCORE_NORM_H
#define CNNCORE_NORM_H

#include <stddef.h>

#ifdef _OPENMP
#define CNN_NORM_SIMD _Pragma("omp simd")
#else
#define CNN_NORM_SIMD
#endif

#define CNN_BN_LANES 8

static inline double cnn_bn_lane_total(const double *a) {
    /* fixed pairwise order */
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

#define CNN_DEFINE_NORM(T, SUF)                                                              \
    /* sum of (x - shift) and of (x - shift)^2 over one channel */                           \
    static inline void cnn_bn_stats_##SUF(const T *restrict x, ptrdiff_t n, ptrdiff_t stride, \
                                          ptrdiff_t len, double shift, double *sum,          \
                                          double *sumsq) {                                   \
        double s[CNN_BN_LANES] = {0}, q[CNN_BN_LANES] = {0};                                 \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                  \
            const T *restrict p = x + i * stride;                                            \
            ptrdiff_t j = 0;                                                                 \
            for (; j + CNN_BN_LANES <= len; j += CNN_BN_LANES)                               \
                for (int k = 0; k < CNN_BN_LANES; ++k) {                                     \
                    double d = (double)p[j + k] - shift;                                     \
                    s[k] += d;                                                               \
                    q[k] += d * d;                                                           \
                }                                                                            \
            for (int k = 0; j < len; ++j, ++k) {                                             \
                double d = (double)p[j] - shift;                                             \
                s[k] += d;                                                                   \
                q[k] += d * d;                                                               \
            }                                                                                \
        }                                                                                    \
        *sum = cnn_bn_lane_total(s);                                                         \
        *sumsq = cnn_bn_lane_total(q);                                                       \
    }                                                                                        \
    /* sum of dy and of dy * (x - mean) over one channel */                                  \
    static inline void cnn_bn_grad_sums_##SUF(const T *restrict dy, const T *restrict x,     \
                                              ptrdiff_t n, ptrdiff_t stride, ptrdiff_t len,  \
                                              double mean, double *sum_dy,                   \
                                              double *sum_dy_xc) {                           \
        double s[CNN_BN_LANES] = {0}, q[CNN_BN_LANES] = {0};                                 \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                  \
            const T *restrict g = dy + i * stride;                                           \
            const T *restrict p = x + i * stride;                                            \
            ptrdiff_t j = 0;                                                                 \
            for (; j + CNN_BN_LANES <= len; j += CNN_BN_LANES)                               \
                for (int k = 0; k < CNN_BN_LANES; ++k) {                                     \
                    double gv = (double)g[j + k];                                            \
                    s[k] += gv;                                                              \
                    q[k] += gv * ((double)p[j + k] - mean);                                  \
                }                                                                            \
            for (int k = 0; j < len; ++j, ++k) {                                             \
                double gv = (double)g[j];                                                    \
                s[k] += gv;                                                                  \
                q[k] += gv * ((double)p[j] - mean);                                          \
            }                                                                                \
        }                                                                                    \
        *sum_dy = cnn_bn_lane_total(s);                                                      \
        *sum_dy_xc = cnn_bn_lane_total(q);                                                   \
    }                                                                                        \
    /* y = (x - mean) * scale + shift, then max(y, 0) if relu */                             \
    static inline void cnn_bn_apply_##SUF(T *restrict y, const T *restrict x, ptrdiff_t n,   \
                                          ptrdiff_t stride, ptrdiff_t len, T mean, T scale,  \
                                          T shift, int relu) {                               \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                  \
            const T *restrict p = x + i * stride;                                            \
            T *restrict q = y + i * stride;                                                  \
            if (relu) {                                                                      \
                CNN_NORM_SIMD for (ptrdiff_t j = 0; j < len; ++j) {                          \
                    T v = (p[j] - mean) * scale + shift;                                     \
                    q[j] = v <= 0 ? (T)0 : v;                                                \
                }                                                                            \
            } else {                                                                         \
                CNN_NORM_SIMD for (ptrdiff_t j = 0; j < len; ++j)                            \
                    q[j] = (p[j] - mean) * scale + shift;                                    \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    /* dx = k1 * dy + k2 * (x - mean) + k3 */                                                \
    static inline void cnn_bn_backward_apply_##SUF(T *restrict dx, const T *restrict dy,     \
                                                   const T *restrict x, ptrdiff_t n,         \
                                                   ptrdiff_t stride, ptrdiff_t len, T mean,  \
                                                   T k1, T k2, T k3) {                       \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                  \
            const T *restrict g = dy + i * stride;                                           \
            const T *restrict p = x + i * stride;                                            \
            T *restrict o = dx + i * stride;                                                 \
            CNN_NORM_SIMD for (ptrdiff_t j = 0; j < len; ++j)                                \
                o[j] = k1 * g[j] + (k2 * (p[j] - mean) + k3);                                \
        }                                                                                    \
    }                                                                                        \
    /* eval mode: dx = k1 * dy in the same pass as the two sums */                           \
    static inline void cnn_bn_backward_eval_##SUF(T *restrict dx, const T *restrict dy,      \
                                                  const T *restrict x, ptrdiff_t n,          \
                                                  ptrdiff_t stride, ptrdiff_t len,           \
                                                  double mean, T k1, double *sum_dy,         \
                                                  double *sum_dy_xc) {                       \
        double s[CNN_BN_LANES] = {0}, q[CNN_BN_LANES] = {0};                                 \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                  \
            const T *restrict g = dy + i * stride;                                           \
            const T *restrict p = x + i * stride;                                            \
            T *restrict o = dx + i * stride;                                                 \
            ptrdiff_t j = 0;                                                                 \
            for (; j + CNN_BN_LANES <= len; j += CNN_BN_LANES)                               \
                for (int k = 0; k < CNN_BN_LANES; ++k) {                                     \
                    double gv = (double)g[j + k];                                            \
                    s[k] += gv;                                                              \
                    q[k] += gv * ((double)p[j + k] - mean);                                  \
                    o[j + k] = k1 * g[j + k];                                                \
                }                                                                            \
            for (int k = 0; j < len; ++j, ++k) {                                             \
                double gv = (double)g[j];                                                    \
                s[k] += gv;                                                                  \
                q[k] += gv * ((double)p[j] - mean);                                          \
                o[j] = k1 * g[j];                                                            \
            }                                                                                \
        }                                                                                    \
        *sum_dy = cnn_bn_lane_total(s);                                                      \
        *sum_dy_xc = cnn_bn_lane_total(q);                                                   \
    }                                                                                        \
    /* out = max(a + b, 0); out may be a or b (no restrict) */                               \
    static inline void cnn_add_relu_##SUF(T *out, const T *a, const T *b, ptrdiff_t n) {     \
        CNN_NORM_SIMD for (ptrdiff_t i = 0; i < n; ++i) {                                    \
            T v = a[i] + b[i];                                                               \
            out[i] = v <= 0 ? (T)0 : v; /* NaN stays NaN */                                  \
        }                                                                                    \
    }                                                                                        \
    /* x = max(x, 0) in place */                                                             \
    static inline void cnn_relu_inplace_##SUF(T *x, ptrdiff_t n) {                           \
        CNN_NORM_SIMD for (ptrdiff_t i = 0; i < n; ++i) x[i] = x[i] <= 0 ? (T)0 : x[i];      \
    }

CNN_DEFINE_NORM(float, f)
CNN_DEFINE_NORM(double, d)

#endif /* CNNCORE_NORM_H */

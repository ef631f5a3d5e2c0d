/* Local response normalisation across channels (src/cnncore/_kernels/lrn.pyx): the work of
 * one task, a block of at most CNN_LRN_BLOCK pixels of one sample, every channel.
 *
 * x, y, g, gx point at pixel s0 of channel 0 of one sample; channel c is at c * S. With
 * D_c = k + scale * sum_{j in W(c)} x_j^2, W(c) = [c - before, c + after] within [0, C):
 * - forward: y_c = x_c * D_c^-beta;
 * - backward: gx_j = g_j D_j^-beta - coef * x_j * sum_{c : j in W(c)} g_c x_c D_c^(-beta-1)
 *   (coef = 2 alpha beta / size).
 * Sums and powers are in double, element by element (no sum crosses pixels, so no order
 * depends on the vector width or the thread count); beta = 0.75 takes
 * D^-0.75 = 1 / (sqrt(D) sqrt(sqrt(D))) instead of pow.
 *
 * The loops run along the pixels of a block and are vectorised by the compiler; as in
 * cnncore_conv_rows.h the build is portable (-O3, no -march) and each kernel exists for
 * AVX-512F, AVX2+FMA and the baseline, chosen at run time by cnn_cr_isa() (on the baseline
 * a double square root is two lanes wide: the AVX-512 version ran 3-4x faster).
 */
#ifndef CNNCORE_LRN_H
#define CNNCORE_LRN_H

#include <math.h>
#include <stddef.h>
#include "cnncore_conv_rows.h"

#ifdef _OPENMP
#define CNN_LRN_SIMD _Pragma("omp simd")
#else
#define CNN_LRN_SIMD
#endif

#define CNN_LRN_BLOCK 128 /* pixels per task */

/* d[i] = k + scale * sum_{j in W(c)} x[j * S + i]^2, i < nb */
#define CNN_LRN_DENOMINATORS(T)                                                            \
    {                                                                                      \
        const ptrdiff_t lo = c - before > 0 ? c - before : 0;                              \
        const ptrdiff_t hi = c + after < C - 1 ? c + after : C - 1;                        \
        CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i) d[i] = 0.0;                        \
        for (ptrdiff_t j = lo; j <= hi; ++j) {                                             \
            const T *restrict row = x + j * S;                                             \
            CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i) {                              \
                const double v = row[i];                                                   \
                d[i] += v * v;                                                             \
            }                                                                              \
        }                                                                                  \
        CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i) d[i] = k + scale * d[i];           \
    }

/* p[i] = d[i]^-beta, i < nb */
#define CNN_LRN_POWERS(p)                                                                  \
    if (three_quarters) {                                                                  \
        CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i) {                                  \
            const double r = sqrt(d[i]);                                                   \
            p[i] = 1.0 / (r * sqrt(r));                                                    \
        }                                                                                  \
    } else {                                                                               \
        for (ptrdiff_t i = 0; i < nb; ++i) p[i] = pow(d[i], -beta);                        \
    }

#define CNN_DEFINE_LRN(T, SUF, ISA, ATTR)                                                  \
    ATTR static void cnn_lrn_forward_##SUF##_##ISA(                                        \
        const T *restrict x, T *restrict y, ptrdiff_t C, ptrdiff_t S, ptrdiff_t nb,        \
        ptrdiff_t before, ptrdiff_t after, double scale, double k, double beta,            \
        int three_quarters) {                                                              \
        double d[CNN_LRN_BLOCK], p[CNN_LRN_BLOCK];                                         \
        for (ptrdiff_t c = 0; c < C; ++c) {                                                \
            CNN_LRN_DENOMINATORS(T)                                                        \
            CNN_LRN_POWERS(p)                                                              \
            const T *restrict xc = x + c * S;                                              \
            T *restrict yc = y + c * S;                                                    \
            CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i) yc[i] = (T)(xc[i] * p[i]);     \
        }                                                                                  \
    }                                                                                      \
    /* dpow, t: C * CNN_LRN_BLOCK doubles each (D_c^-beta and g_c x_c D_c^(-beta-1)) */    \
    ATTR static void cnn_lrn_backward_##SUF##_##ISA(                                       \
        const T *restrict g, const T *restrict x, T *restrict gx, ptrdiff_t C, ptrdiff_t S,\
        ptrdiff_t nb, ptrdiff_t before, ptrdiff_t after, double scale, double coef,        \
        double k, double beta, int three_quarters, double *restrict dpow,                  \
        double *restrict t) {                                                              \
        double d[CNN_LRN_BLOCK], back[CNN_LRN_BLOCK];                                      \
        for (ptrdiff_t c = 0; c < C; ++c) {                                                \
            CNN_LRN_DENOMINATORS(T)                                                        \
            double *restrict pc = dpow + c * CNN_LRN_BLOCK;                                \
            double *restrict tc = t + c * CNN_LRN_BLOCK;                                   \
            CNN_LRN_POWERS(pc)                                                             \
            const T *restrict gc = g + c * S;                                              \
            const T *restrict xc = x + c * S;                                              \
            CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i)                                \
                tc[i] = (double)gc[i] * xc[i] * pc[i] / d[i];                              \
        }                                                                                  \
        for (ptrdiff_t j = 0; j < C; ++j) { /* j is in W(c) for c in [j - after, j + before] */\
            const ptrdiff_t lo = j - after > 0 ? j - after : 0;                            \
            const ptrdiff_t hi = j + before < C - 1 ? j + before : C - 1;                  \
            CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i) back[i] = 0.0;                 \
            for (ptrdiff_t c = lo; c <= hi; ++c) {                                         \
                const double *restrict tc = t + c * CNN_LRN_BLOCK;                         \
                CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i) back[i] += tc[i];          \
            }                                                                              \
            const T *restrict gj = g + j * S;                                              \
            const T *restrict xj = x + j * S;                                              \
            const double *restrict pj = dpow + j * CNN_LRN_BLOCK;                          \
            T *restrict oj = gx + j * S;                                                   \
            CNN_LRN_SIMD for (ptrdiff_t i = 0; i < nb; ++i)                                \
                oj[i] = (T)((double)gj[i] * pj[i] - coef * xj[i] * back[i]);               \
        }                                                                                  \
    }

#if CNN_CR_X86
CNN_DEFINE_LRN(float, f, avx512, CNN_CR_AVX512)
CNN_DEFINE_LRN(double, d, avx512, CNN_CR_AVX512)
CNN_DEFINE_LRN(float, f, avx2, CNN_CR_AVX2)
CNN_DEFINE_LRN(double, d, avx2, CNN_CR_AVX2)
#define CNN_LRN_DISPATCH(SUF, NAME, ...)                                                   \
    if (isa == 2) { cnn_lrn_##NAME##_##SUF##_avx512(__VA_ARGS__); return; }                \
    if (isa == 1) { cnn_lrn_##NAME##_##SUF##_avx2(__VA_ARGS__); return; }
#else
#define CNN_LRN_DISPATCH(SUF, NAME, ...) (void)isa;
#endif
CNN_DEFINE_LRN(float, f, base, )
CNN_DEFINE_LRN(double, d, base, )

#define CNN_DEFINE_LRN_ENTRY(T, SUF)                                                       \
    /* The forward task at ISA level `isa` (cnn_cr_isa; a lower level may be asked for). */\
    static inline void cnn_lrn_forward_##SUF(                                              \
        int isa, const T *x, T *y, ptrdiff_t C, ptrdiff_t S, ptrdiff_t nb,                 \
        ptrdiff_t before, ptrdiff_t after, double scale, double k, double beta, int tq) {  \
        CNN_LRN_DISPATCH(SUF, forward, x, y, C, S, nb, before, after, scale, k, beta, tq)  \
        cnn_lrn_forward_##SUF##_base(x, y, C, S, nb, before, after, scale, k, beta, tq);   \
    }                                                                                      \
    static inline void cnn_lrn_backward_##SUF(                                             \
        int isa, const T *g, const T *x, T *gx, ptrdiff_t C, ptrdiff_t S, ptrdiff_t nb,    \
        ptrdiff_t before, ptrdiff_t after, double scale, double coef, double k,            \
        double beta, int tq, double *dpow, double *t) {                                    \
        CNN_LRN_DISPATCH(SUF, backward, g, x, gx, C, S, nb, before, after, scale, coef, k, \
                         beta, tq, dpow, t)                                                \
        cnn_lrn_backward_##SUF##_base(g, x, gx, C, S, nb, before, after, scale, coef, k,   \
                                      beta, tq, dpow, t);                                  \
    }
CNN_DEFINE_LRN_ENTRY(float, f)
CNN_DEFINE_LRN_ENTRY(double, d)

#endif

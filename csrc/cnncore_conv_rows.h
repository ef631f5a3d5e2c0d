/* Direct convolution of one output row for few input channels (conv_rows.pyx).
 *
 * With few input channels (K = C_in*kh*kw taps of a few tens to a few hundred) and few
 * output channels, im2col + GEMM is a skinny product (M = C_out = 16) whose K x cols column
 * matrix costs as much memory traffic as the GEMM itself. Here, as in the direct
 * convolutions of oneDNN (output-channel blocking, input vectors along the output row),
 * each output row is computed in registers:
 *
 *   y[o, oh, q] = bias[o] + sum_t w[o, t] * xb[off[t] + q],   t = (c*kh + i)*kw + j,
 *
 * in that order of t (so every output element has one fixed summation order, whatever the
 * thread count). ``xb`` holds, for the output row oh, the input rows it reads: for each
 * (c, i), input row ``ih = oh*sh - ph + i*dh`` with ``pw`` zeros on the left and zeros on
 * the right (zero rows outside the image), split into its ``sw`` phases (phase r: padded
 * columns r, r + sw, r + 2sw, ...), each ``Wq`` long. So tap (c, i, j) of output column q
 * is ``xb[((c*kh + i)*sw + (j*dw) % sw)*Wq + (j*dw) / sw + q]``: contiguous in q, whatever
 * the stride (the phase split of cnn_dw3_pad in cnncore_direct.h).
 *
 * A strip of NV vectors of VL outputs times a block of OB output channels is accumulated
 * in OB*NV vector registers: per tap, NV input vectors are loaded and OB weights
 * broadcast, each input vector feeding OB fused multiply-adds. The weights are packed per
 * block of OB channels as wt[(ob*K + t)*OB + o] (zeros past C_out), the bias as
 * bp[ob*OB + o].
 *
 * The build is portable (-O3, no -march): each row kernel exists for AVX-512F, AVX2+FMA
 * (GCC/clang `target` attributes) and the baseline (SSE2 on x86-64, plain C elsewhere and
 * on compilers without GNU vector extensions), chosen at run time by cnn_cr_isa().
 */
#ifndef CNNCORE_CONV_ROWS_H
#define CNNCORE_CONV_ROWS_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define CNN_CR_X86 1
#else
#define CNN_CR_X86 0
#endif

#if defined(__GNUC__)
#define CNN_CR_VECTOR(T, VL) T __attribute__((vector_size((VL) * sizeof(T))))
/* the same, for unaligned loads and stores */
#define CNN_CR_VECTOR_U(T, VL) \
    T __attribute__((vector_size((VL) * sizeof(T)), aligned(sizeof(T)), may_alias))
#define CNN_CR_UNROLL _Pragma("GCC unroll 16")
#define CNN_CR_BASE_VL(T) (16 / (int)sizeof(T))  /* SSE2 / NEON: 16-byte vectors */
#else
#define CNN_CR_VECTOR(T, VL) T  /* VL == 1: plain scalars */
#define CNN_CR_VECTOR_U(T, VL) T
#define CNN_CR_UNROLL
#define CNN_CR_BASE_VL(T) 1
#endif

/* Widest padded row a kernel may read past Wo: outputs are computed in whole vectors of
 * at most CNN_CR_PAD elements (the last one partly stored). */
#define CNN_CR_PAD 16

/* 2: AVX-512F, 1: AVX2 + FMA, 0: baseline. */
static inline int cnn_cr_isa(void) {
#if CNN_CR_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

/* Output channels per register block of each ISA level (the weights are packed for it). */
static inline int cnn_cr_block(int isa) { return isa == 2 ? 8 : 4; }

/* One strip: NV_ vectors of outputs from column q on, channels [ob*OB, ob*OB + no);
 * PARTIAL: only Wo - q (< VL) columns are stored. */
#define CNN_CR_STRIP(T, V, VU, VL, OB, NV_, PARTIAL)                                       \
    {                                                                                      \
        const T *wb = wt + ob * K * OB;                                                    \
        V acc[OB][NV_], xv[NV_];                                                           \
        CNN_CR_UNROLL for (int o = 0; o < OB; ++o) {                                       \
            const V b = (V){0} + bp[ob * OB + o];                                          \
            CNN_CR_UNROLL for (int v = 0; v < NV_; ++v) acc[o][v] = b;                     \
        }                                                                                  \
        for (ptrdiff_t t = 0; t < K; ++t) {                                                \
            const T *p = xb + off[t] + q;                                                  \
            CNN_CR_UNROLL for (int v = 0; v < NV_; ++v) xv[v] = *(const VU *)(p + v * VL); \
            CNN_CR_UNROLL for (int o = 0; o < OB; ++o) {                                   \
                const V wv = (V){0} + wb[t * OB + o];                                      \
                CNN_CR_UNROLL for (int v = 0; v < NV_; ++v) acc[o][v] += wv * xv[v];       \
            }                                                                              \
        }                                                                                  \
        CNN_CR_UNROLL for (int o = 0; o < OB; ++o) {                                       \
            if (o >= no) break;                                                            \
            T *d = y + (ob * OB + o) * ystride + q;                                        \
            if (PARTIAL) {                                                                 \
                T tmp[VL];                                                                 \
                *(VU *)tmp = acc[o][0];                                                    \
                for (ptrdiff_t k = 0; k < Wo - q; ++k) d[k] = tmp[k];                      \
            } else {                                                                       \
                CNN_CR_UNROLL for (int v = 0; v < NV_; ++v) *(VU *)(d + v * VL) = acc[o][v]; \
            }                                                                              \
        }                                                                                  \
    }

/* cnn_cr_row_<SUF>_<ISA>: the Wo outputs of one row of the C_out channels (y: channel 0's
 * row, channels ystride apart), from the packed rows xb. */
#define CNN_DEFINE_CR_ROW(T, SUF, ISA, ATTR, VL, OB, NV)                                   \
    ATTR static void cnn_cr_row_##SUF##_##ISA(T *y, ptrdiff_t ystride, ptrdiff_t Wo,        \
                                              ptrdiff_t Cout, const T *xb,                 \
                                              const ptrdiff_t *off, ptrdiff_t K,           \
                                              const T *wt, const T *bp) {                  \
        typedef CNN_CR_VECTOR(T, VL) V;                                                    \
        typedef CNN_CR_VECTOR_U(T, VL) VU;                                                 \
        const ptrdiff_t nob = (Cout + OB - 1) / OB;                                        \
        ptrdiff_t q = 0;                                                                   \
        for (; q + NV * VL <= Wo; q += NV * VL)                                            \
            for (ptrdiff_t ob = 0; ob < nob; ++ob) {                                       \
                const ptrdiff_t no = Cout - ob * OB;                                       \
                CNN_CR_STRIP(T, V, VU, VL, OB, NV, 0)                                          \
            }                                                                              \
        for (; q < Wo; q += VL)                                                            \
            for (ptrdiff_t ob = 0; ob < nob; ++ob) {                                       \
                const ptrdiff_t no = Cout - ob * OB;                                       \
                if (q + VL <= Wo) CNN_CR_STRIP(T, V, VU, VL, OB, 1, 0)                         \
                else CNN_CR_STRIP(T, V, VU, VL, OB, 1, 1)                                      \
            }                                                                              \
    }

#if CNN_CR_X86
#define CNN_CR_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define CNN_CR_AVX2 __attribute__((target("avx2,fma")))
/* 8 channels x 3 vectors: 24 of the 32 zmm registers; 4 x 3: 12 of the 16 ymm. */
CNN_DEFINE_CR_ROW(float, f, avx512, CNN_CR_AVX512, 16, 8, 3)
CNN_DEFINE_CR_ROW(double, d, avx512, CNN_CR_AVX512, 8, 8, 3)
CNN_DEFINE_CR_ROW(float, f, avx2, CNN_CR_AVX2, 8, 4, 3)
CNN_DEFINE_CR_ROW(double, d, avx2, CNN_CR_AVX2, 4, 4, 3)
#endif
CNN_DEFINE_CR_ROW(float, f, base, , CNN_CR_BASE_VL(float), 4, 2)
CNN_DEFINE_CR_ROW(double, d, base, , CNN_CR_BASE_VL(double), 4, 2)

#define CNN_DEFINE_CR_HELPERS(T, SUF)                                                      \
    /* The row kernel of ISA level `isa` (cnn_cr_isa; a lower level may be asked for). */  \
    static inline void cnn_cr_row_##SUF(int isa, T *y, ptrdiff_t ystride, ptrdiff_t Wo,   \
                                        ptrdiff_t Cout, const T *xb, const ptrdiff_t *off, \
                                        ptrdiff_t K, const T *wt, const T *bp) {          \
        CNN_CR_DISPATCH_##SUF                                                              \
        cnn_cr_row_##SUF##_base(y, ystride, Wo, Cout, xb, off, K, wt, bp);                 \
    }                                                                                      \
    /* xb for output row oh of the C x H x W image x (see the top of this file). */        \
    static inline void cnn_cr_pack_rows_##SUF(T *restrict xb, const T *restrict x,        \
                                              ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,      \
                                              ptrdiff_t kh, ptrdiff_t oh, ptrdiff_t sh,   \
                                              ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,   \
                                              ptrdiff_t dh, ptrdiff_t Wq) {               \
        for (ptrdiff_t c = 0; c < C; ++c)                                                  \
            for (ptrdiff_t i = 0; i < kh; ++i) {                                           \
                T *d = xb + (c * kh + i) * sw * Wq;                                        \
                const ptrdiff_t ih = oh * sh - ph + i * dh;                                \
                if (ih < 0 || ih >= H) {                                                   \
                    memset(d, 0, (size_t)(sw * Wq) * sizeof(T));                           \
                    continue;                                                              \
                }                                                                          \
                const T *src = x + (c * H + ih) * W;                                       \
                for (ptrdiff_t r = 0; r < sw; ++r, d += Wq) {                              \
                    /* padded column u*sw + r is x column u*sw + r - pw: inside for u in   \
                     * [lo, hi) */                                                         \
                    ptrdiff_t lo = pw > r ? (pw - r + sw - 1) / sw : 0;                    \
                    ptrdiff_t hi = (W + pw - r + sw - 1) / sw;                             \
                    if (hi > Wq) hi = Wq;                                                  \
                    if (lo > hi) lo = hi;                                                  \
                    memset(d, 0, (size_t)lo * sizeof(T));                                  \
                    if (sw == 1) {                                                         \
                        memcpy(d + lo, src + lo - pw, (size_t)(hi - lo) * sizeof(T));      \
                    } else {                                                               \
                        const T *s0 = src + r - pw;                                        \
                        for (ptrdiff_t u = lo; u < hi; ++u) d[u] = s0[u * sw];             \
                    }                                                                      \
                    memset(d + hi, 0, (size_t)(Wq - hi) * sizeof(T));                      \
                }                                                                          \
            }                                                                              \
    }                                                                                      \
    /* wt[(ob*K + t)*OB + o] = w[ob*OB + o, t] and bp[ob*OB + o] = bias (zeros past Cout or \
     * without a bias): w is Cout x K, wt nob*K*OB, bp nob*OB (nob = ceil(Cout / OB)). */   \
    static inline void cnn_cr_pack_weights_##SUF(T *restrict wt, T *restrict bp,          \
                                                 const T *restrict w, const T *bias,      \
                                                 ptrdiff_t Cout, ptrdiff_t K, ptrdiff_t OB) { \
        const ptrdiff_t nob = (Cout + OB - 1) / OB;                                        \
        for (ptrdiff_t ob = 0; ob < nob; ++ob)                                             \
            for (ptrdiff_t o = 0; o < OB; ++o) {                                           \
                const ptrdiff_t co = ob * OB + o;                                          \
                bp[ob * OB + o] = co < Cout && bias ? bias[co] : 0;                        \
                for (ptrdiff_t t = 0; t < K; ++t)                                          \
                    wt[(ob * K + t) * OB + o] = co < Cout ? w[co * K + t] : 0;             \
            }                                                                              \
    }

#if CNN_CR_X86
#define CNN_CR_DISPATCH_f                                                                  \
    if (isa >= 2) { cnn_cr_row_f_avx512(y, ystride, Wo, Cout, xb, off, K, wt, bp); return; } \
    if (isa == 1) { cnn_cr_row_f_avx2(y, ystride, Wo, Cout, xb, off, K, wt, bp); return; }
#define CNN_CR_DISPATCH_d                                                                  \
    if (isa >= 2) { cnn_cr_row_d_avx512(y, ystride, Wo, Cout, xb, off, K, wt, bp); return; } \
    if (isa == 1) { cnn_cr_row_d_avx2(y, ystride, Wo, Cout, xb, off, K, wt, bp); return; }
#else
#define CNN_CR_DISPATCH_f (void)isa;
#define CNN_CR_DISPATCH_d (void)isa;
#endif

CNN_DEFINE_CR_HELPERS(float, f)
CNN_DEFINE_CR_HELPERS(double, d)

#undef CNN_DEFINE_CR_HELPERS
#undef CNN_DEFINE_CR_ROW
#undef CNN_CR_STRIP

#endif /* CNNCORE_CONV_ROWS_H */

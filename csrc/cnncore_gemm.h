/* A register-blocked GEMM against pre-packed weights: C (M x N) = Wp (M x K) @ B (K x N)
 * [+ bias per row], for the convolution products whose left operand is a weight matrix
 * (the Winograd products U[xi] @ V[xi]; winograd.pyx).
 *
 * Why not BLAS: the left operand is known before the call (the weights), so it can be
 * packed once (kept between calls in eval mode) instead of by every GEMM call, and the
 * right operand is read where it lies (rows ldb apart), since the products are short
 * (N = a few tens to a few hundred columns) and BLAS's packing of both operands costs a
 * large share of them. Measured side by side on this project's machine (one AVX-512 core,
 * float32): 115 GFLOP/s for 256 x 1152 x 64 and 512 x 2304 x 64, against 97-101 for
 * OpenBLAS 0.3.30 (SkylakeX kernels) on the same products.
 *
 * The weights are packed per block of OB = CNN_PGEMM_OB rows, k-major:
 * wp[(ob*K + k)*OB + o] = W[ob*OB + o, k], with cnn_pgemm_rows(M) rows (zeros past M).
 * A strip of NV vectors of VL columns times one block of OB rows is accumulated in OB*NV
 * vector registers: per k, NV vectors of B are loaded and OB weights broadcast, each B
 * vector feeding OB fused multiply-adds. Every output is the sum over k in increasing order
 * (one accumulator per output, started at the bias, zero or C's value), so results do not
 * depend on how callers split the columns or rows between threads.
 *
 * B is read in columns [0, N) only: the last, partial vector of a row is the one ending at
 * column N (overlapping the one before; a product narrower than one vector is done by a
 * scalar loop), and only the columns not yet stored are stored from it.
 *
 * As in cnncore_conv_rows.h the build is portable (-O3, no -march): each kernel exists for
 * AVX-512F, AVX2+FMA and the baseline, chosen at run time by cnn_cr_isa().
 */
#ifndef CNNCORE_GEMM_H
#define CNNCORE_GEMM_H

#include "cnncore_conv_rows.h"

#define CNN_PGEMM_OB 6    /* rows per packed block: 6 x 4 zmm, 6 x 2 ymm / xmm accumulators */
#define CNN_PGEMM_ROWS 24 /* the packed rows are a multiple of this: 4 blocks (the tails') */

/* Rows of the packed copy of an M-row matrix (zeros past M). */
static inline ptrdiff_t cnn_pgemm_rows(ptrdiff_t M) {
    return (M + CNN_PGEMM_ROWS - 1) / CNN_PGEMM_ROWS * CNN_PGEMM_ROWS;
}

/* One strip: NV_ vectors of columns from q on, times ROWS rows (ROWS / OB packed blocks)
 * from row ob*OB on, of which the first `no` exist. Row o's weight for k is
 * wb[((o / OB)*ks + k)*OB + o % OB]. PARTIAL: the last N - q (< VL) columns, computed as
 * the vector ending at column N (which overlaps the strip before; N >= VL) so that B is
 * never read past N; only columns [q, N) are stored. */
#define CNN_PG_STRIP(T, V, VU, VL, ROWS, NV_, PARTIAL)                                     \
    {                                                                                      \
        V acc[ROWS][NV_], bv[NV_];                                                         \
        const ptrdiff_t q0 = PARTIAL ? N - VL : q;                                         \
        CNN_CR_UNROLL for (int o = 0; o < ROWS; ++o) {                                     \
            const V b0 = (V){0} + (bias && o < no ? bias[ob * OB + o] : (T)0);             \
            CNN_CR_UNROLL for (int v = 0; v < NV_; ++v) {                                  \
                acc[o][v] = b0;                                                            \
                if (add && o < no)                                                         \
                    acc[o][v] = *(const VU *)(C + (ob * OB + o) * ldc + q0 + v * VL);      \
            }                                                                              \
        }                                                                                  \
        const T *bq = B + q0;                                                              \
        for (ptrdiff_t k = 0; k < K; ++k) {                                                \
            CNN_CR_UNROLL for (int v = 0; v < NV_; ++v)                                    \
                bv[v] = *(const VU *)(bq + k * ldb + v * VL);                              \
            CNN_CR_UNROLL for (int o = 0; o < ROWS; ++o) {                                 \
                const V wv = (V){0} + wb[((o / OB) * ks + k) * OB + o % OB];               \
                CNN_CR_UNROLL for (int v = 0; v < NV_; ++v) acc[o][v] += wv * bv[v];       \
            }                                                                              \
        }                                                                                  \
        CNN_CR_UNROLL for (int o = 0; o < ROWS; ++o) {                                     \
            if (o >= no) break;                                                            \
            T *d = C + (ob * OB + o) * ldc + q0;                                           \
            if (PARTIAL) {                                                                 \
                T tmp[VL];                                                                 \
                *(VU *)tmp = acc[o][0];                                                    \
                for (ptrdiff_t j = q - q0; j < VL; ++j) d[j] = tmp[j];                     \
            } else {                                                                       \
                CNN_CR_UNROLL for (int v = 0; v < NV_; ++v) *(VU *)(d + v * VL) = acc[o][v]; \
            }                                                                              \
        }                                                                                  \
    }

/* cnn_pgemm_<SUF>_<ISA>: C = Wp @ B (+ bias[row] if bias is not NULL), or C += Wp @ B if
 * add (each sum then starts from C's value), N >= VL. Row blocks outside, column strips
 * inside: a block's K x OB packed weights stay in L1 while B streams. The columns left
 * after the strips of NV vectors (all of them when N < NV*VL) are done one vector at a
 * time for TG blocks of rows at once (TG*OB accumulators: one block alone would leave the
 * FMA units waiting on each accumulator's latency). */
#define CNN_DEFINE_PGEMM(T, SUF, ISA, ATTR, VL, NV, TG)                                    \
    ATTR static void cnn_pgemm_##SUF##_##ISA(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,        \
                                             const T *wp, ptrdiff_t ks, const T *B,        \
                                             ptrdiff_t ldb, const T *bias, int add,        \
                                             T *C, ptrdiff_t ldc) {                        \
        typedef CNN_CR_VECTOR(T, VL) V;                                                    \
        typedef CNN_CR_VECTOR_U(T, VL) VU;                                                 \
        const int OB = CNN_PGEMM_OB;                                                       \
        const ptrdiff_t nob = (M + OB - 1) / OB;                                           \
        const ptrdiff_t n_full = N - N % (NV * VL);                                        \
        for (ptrdiff_t ob = 0; ob < nob; ++ob) {                                           \
            const ptrdiff_t no = M - ob * OB;                                              \
            const T *wb = wp + ob * ks * OB;                                               \
            for (ptrdiff_t q = 0; q < n_full; q += NV * VL)                                \
                CNN_PG_STRIP(T, V, VU, VL, CNN_PGEMM_OB, NV, 0)                            \
        }                                                                                  \
        if (n_full == N) return;                                                           \
        for (ptrdiff_t ob = 0; ob < nob; ob += TG) {                                       \
            const ptrdiff_t no = M - ob * OB;                                              \
            const T *wb = wp + ob * ks * OB;                                               \
            ptrdiff_t q = n_full;                                                          \
            for (; q + VL <= N; q += VL) CNN_PG_STRIP(T, V, VU, VL, TG * CNN_PGEMM_OB, 1, 0) \
            if (q < N) CNN_PG_STRIP(T, V, VU, VL, TG * CNN_PGEMM_OB, 1, 1)                 \
        }                                                                                  \
    }

/* The same products one element at a time, for N below one vector. */
#define CNN_DEFINE_PGEMM_SCALAR(T, SUF)                                                    \
    static void cnn_pgemm_##SUF##_scalar(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,            \
                                         const T *wp, ptrdiff_t ks, const T *B,            \
                                         ptrdiff_t ldb, const T *bias, int add, T *C,      \
                                         ptrdiff_t ldc) {                                  \
        const ptrdiff_t OB = CNN_PGEMM_OB;                                                 \
        for (ptrdiff_t o = 0; o < M; ++o) {                                                \
            const T *w = wp + (o / OB) * ks * OB + o % OB;                                 \
            for (ptrdiff_t j = 0; j < N; ++j) {                                            \
                T s = add ? C[o * ldc + j] : bias ? bias[o] : (T)0;                        \
                for (ptrdiff_t k = 0; k < K; ++k) s += w[k * OB] * B[k * ldb + j];         \
                C[o * ldc + j] = s;                                                        \
            }                                                                              \
        }                                                                                  \
    }
CNN_DEFINE_PGEMM_SCALAR(float, f)
CNN_DEFINE_PGEMM_SCALAR(double, d)

#if CNN_CR_X86
/* 6 rows x 4 vectors (24 of the 32 zmm), tails 2 blocks x 1 vector (4 blocks: 0.8x the
 * speed); 6 x 2 and 2 x 1 in the 16 ymm / xmm registers. */
CNN_DEFINE_PGEMM(float, f, avx512, CNN_CR_AVX512, 16, 4, 2)
CNN_DEFINE_PGEMM(double, d, avx512, CNN_CR_AVX512, 8, 4, 2)
CNN_DEFINE_PGEMM(float, f, avx2, CNN_CR_AVX2, 8, 2, 2)
CNN_DEFINE_PGEMM(double, d, avx2, CNN_CR_AVX2, 4, 2, 2)
#endif
CNN_DEFINE_PGEMM(float, f, base, , CNN_CR_BASE_VL(float), 2, 2)
CNN_DEFINE_PGEMM(double, d, base, , CNN_CR_BASE_VL(double), 2, 2)

#define CNN_DEFINE_PGEMM_HELPERS(T, SUF, BASE_VL)                                          \
    /* C (M x N) = W[:, k0:k0+K] @ B (K x N) (+ bias; C += ... if add) at ISA level `isa`   \
     * (cnn_cr_isa; a lower level may be asked for), wp pointing at column k0 of the       \
     * packed W whose blocks are ks columns long (wp + k0*OB; ks = K for the whole W). */  \
    static inline void cnn_pgemm_##SUF(int isa, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,     \
                                       const T *wp, ptrdiff_t ks, const T *B,              \
                                       ptrdiff_t ldb, const T *bias, int add, T *C,        \
                                       ptrdiff_t ldc) {                                    \
        CNN_PG_DISPATCH_##SUF  /* each vector kernel needs N >= its vector length */     \
        if (N < BASE_VL) {                                                                 \
            cnn_pgemm_##SUF##_scalar(M, N, K, wp, ks, B, ldb, bias, add, C, ldc);               \
            return;                                                                        \
        }                                                                                  \
        cnn_pgemm_##SUF##_base(M, N, K, wp, ks, B, ldb, bias, add, C, ldc);                     \
    }                                                                                      \
    /* Rows [o0, o1) of W (M x K, rows ldw apart, entry (o, k) at w[o*ldw + k*sk]) into    \
     * the packed wp (see the top of this file); o0 is a multiple of OB. Rows past M     \
     * (up to cnn_pgemm_rows(M)) are zeros. */                                             \
    static inline void cnn_pgemm_pack_##SUF(T *restrict wp, const T *restrict w,          \
                                            ptrdiff_t M, ptrdiff_t K, ptrdiff_t ldw,       \
                                            ptrdiff_t sk, ptrdiff_t o0, ptrdiff_t o1) {    \
        const ptrdiff_t OB = CNN_PGEMM_OB;                                                 \
        for (ptrdiff_t o = o0; o < o1; ++o) {                                              \
            T *d = wp + (o / OB) * K * OB + o % OB;                                        \
            if (o >= M) {                                                                  \
                for (ptrdiff_t k = 0; k < K; ++k) d[k * OB] = 0;                           \
            } else {                                                                       \
                const T *s = w + o * ldw;                                                  \
                for (ptrdiff_t k = 0; k < K; ++k) d[k * OB] = s[k * sk];                   \
            }                                                                              \
        }                                                                                  \
    }

#if CNN_CR_X86
#define CNN_PG_DISPATCH_f                                                                  \
    if (isa >= 2 && N >= 16)                                                               \
        { cnn_pgemm_f_avx512(M, N, K, wp, ks, B, ldb, bias, add, C, ldc); return; }       \
    if (isa >= 1 && N >= 8)                                                                \
        { cnn_pgemm_f_avx2(M, N, K, wp, ks, B, ldb, bias, add, C, ldc); return; }
#define CNN_PG_DISPATCH_d                                                                  \
    if (isa >= 2 && N >= 8)                                                               \
        { cnn_pgemm_d_avx512(M, N, K, wp, ks, B, ldb, bias, add, C, ldc); return; }       \
    if (isa >= 1 && N >= 4)                                                                \
        { cnn_pgemm_d_avx2(M, N, K, wp, ks, B, ldb, bias, add, C, ldc); return; }
#else
#define CNN_PG_DISPATCH_f (void)isa;
#define CNN_PG_DISPATCH_d (void)isa;
#endif

CNN_DEFINE_PGEMM_HELPERS(float, f, CNN_CR_BASE_VL(float))
CNN_DEFINE_PGEMM_HELPERS(double, d, CNN_CR_BASE_VL(double))

#undef CNN_DEFINE_PGEMM_HELPERS

#endif

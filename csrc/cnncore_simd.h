/* Small C helpers for the Cython kernels: loops that want `restrict` and `#pragma omp simd`,
 * and the flush-to-zero switch. Included from Cython with `cdef extern from "cnncore_simd.h"`.
 * Every typed helper exists for float (suffix _f) and double (suffix _d); cnn_copy_rows and
 * cnn_zero_rows, under the typed im2col row helpers, work on bytes. */
#ifndef CNNCORE_SIMD_H
#define CNNCORE_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE__) || defined(_M_X64) || defined(__x86_64__)
#include <xmmintrin.h>
#define CNN_HAVE_MXCSR 1
#else
#define CNN_HAVE_MXCSR 0
#endif

#ifdef _OPENMP
#define CNN_SIMD _Pragma("omp simd")
#else
#define CNN_SIMD
#endif

#define CNN_LANES 8  /* partial sums of cnn_dot: one AVX register of floats */
#define CNN_POOL_CHUNK 256  /* output columns per pass of cnn_max_pool_2x2_arg */

/* Copy `rows` rows of nbytes (a multiple of 4): row r goes from s + r*ss to d + r*ds (byte
 * strides). The rows of im2col are short (a few to a few tens of elements): a memcpy call
 * per row cost more than the copy, and a plain copy loop is turned back into that call by
 * the compiler. So a row of up to 128 bytes is copied as ceil(nbytes/16) fixed 16-byte
 * blocks, the last one ending at the row's end (it may overlap the one before; each is one
 * vector load and store), with the size dispatch done once for all rows. */
#define CNN_ROWS(BODY) for (ptrdiff_t r = 0; r < rows; ++r, d += ds, s += ss) { BODY }
#define CNN_CPY(off, k) memcpy(d + (off), s + (off), k)
#define CNN_CPY16(off) CNN_CPY(off, 16)
static inline void cnn_copy_rows(char *restrict d, ptrdiff_t ds, const char *restrict s,
                                 ptrdiff_t ss, size_t nbytes, ptrdiff_t rows) {
    size_t e = nbytes - 16;  /* offset of the last 16-byte block */
    if (nbytes > 128) { CNN_ROWS(memcpy(d, s, nbytes);) return; }
    if (nbytes < 16) {
        if (nbytes >= 8) CNN_ROWS(CNN_CPY(0, 8); CNN_CPY(nbytes - 8, 8);)
        else if (nbytes >= 4) CNN_ROWS(CNN_CPY(0, 4);)
        return;
    }
    switch ((nbytes + 15) / 16) {
    case 1: CNN_ROWS(CNN_CPY16(0);) break;  /* nbytes == 16 */
    case 2: CNN_ROWS(CNN_CPY16(0); CNN_CPY16(e);) break;
    case 3: CNN_ROWS(CNN_CPY16(0); CNN_CPY16(16); CNN_CPY16(e);) break;
    case 4: CNN_ROWS(CNN_CPY16(0); CNN_CPY16(16); CNN_CPY16(32); CNN_CPY16(e);) break;
    case 5: CNN_ROWS(CNN_CPY16(0); CNN_CPY16(16); CNN_CPY16(32); CNN_CPY16(48);
                     CNN_CPY16(e);) break;
    case 6: CNN_ROWS(CNN_CPY16(0); CNN_CPY16(16); CNN_CPY16(32); CNN_CPY16(48);
                     CNN_CPY16(64); CNN_CPY16(e);) break;
    case 7: CNN_ROWS(CNN_CPY16(0); CNN_CPY16(16); CNN_CPY16(32); CNN_CPY16(48);
                     CNN_CPY16(64); CNN_CPY16(80); CNN_CPY16(e);) break;
    default: CNN_ROWS(CNN_CPY16(0); CNN_CPY16(16); CNN_CPY16(32); CNN_CPY16(48);
                      CNN_CPY16(64); CNN_CPY16(80); CNN_CPY16(96); CNN_CPY16(e);) break;
    }
}
#undef CNN_CPY16
#undef CNN_ROWS
#undef CNN_CPY

/* Zero `rows` rows of nbytes (a multiple of 4), d + r*ds for r in [0, rows): the short
 * margins of im2col blocks that reach the padding, with cnn_copy_rows' blocks read from a
 * constant zero row. */
static const char cnn_zero_row[128] = {0};
static inline void cnn_zero_rows(char *d, ptrdiff_t ds, size_t nbytes, ptrdiff_t rows) {
    if (nbytes > sizeof(cnn_zero_row)) {
        for (ptrdiff_t r = 0; r < rows; ++r, d += ds) memset(d, 0, nbytes);
        return;
    }
    cnn_copy_rows(d, ds, cnn_zero_row, 0, nbytes, rows);
}

/* im2col rows: dst[r*dst_stride + k] = src[r*src_stride + k*step], k in [0, n), r in
 * [0, rows); and dst[r*dst_stride + k] = 0. */
#define CNN_DEFINE_GATHER_ROWS(T, SUF)                                                     \
    static inline void cnn_gather_rows_##SUF(T *restrict dst, ptrdiff_t dst_stride,      \
                                               const T *restrict src, ptrdiff_t src_stride, \
                                               ptrdiff_t n, ptrdiff_t step, ptrdiff_t rows) { \
        if (step == 1) {                                                                  \
            cnn_copy_rows((char *)dst, dst_stride * (ptrdiff_t)sizeof(T),                 \
                          (const char *)src, src_stride * (ptrdiff_t)sizeof(T),           \
                          (size_t)n * sizeof(T), rows);                                   \
            return;                                                                       \
        }                                                                                 \
        for (ptrdiff_t r = 0; r < rows; ++r, dst += dst_stride, src += src_stride) {      \
            CNN_SIMD for (ptrdiff_t k = 0; k < n; ++k) dst[k] = src[k * step];            \
        }                                                                                 \
    }                                                                                     \
    static inline void cnn_zero_rows_##SUF(T *dst, ptrdiff_t dst_stride, ptrdiff_t n,    \
                                             ptrdiff_t rows) {                            \
        cnn_zero_rows((char *)dst, dst_stride * (ptrdiff_t)sizeof(T),                     \
                      (size_t)n * sizeof(T), rows);                                       \
    }

/* col2im rows, the adjoint of cnn_gather_rows: dst[r*dst_stride + k*step] += src[r*src_stride
 * + k], k in [0, n), r in [0, rows). With step >= 1 no two k of a row hit the same dst
 * element, so the inner loop has no dependence. */
#define CNN_ADD_ROWS_LOOP(N)                                                               \
    for (ptrdiff_t r = 0; r < rows; ++r, dst += dst_stride, src += src_stride) {          \
        CNN_SIMD for (ptrdiff_t k = 0; k < (N); ++k) dst[k] += src[k];                    \
    }
#define CNN_ADD_ROWS_N(N) case N: CNN_ADD_ROWS_LOOP(N) break;
#define CNN_DEFINE_SCATTER_ADD_ROWS(T, SUF)                                                \
    static inline void cnn_scatter_add_rows_##SUF(T *restrict dst, ptrdiff_t dst_stride, \
                                                    const T *restrict src,                \
                                                    ptrdiff_t src_stride, ptrdiff_t n,    \
                                                    ptrdiff_t step, ptrdiff_t rows) {     \
        if (step == 1) {                                                                  \
            switch (n) { /* short rows: a fixed length, unrolled without loop control */  \
            CNN_ADD_ROWS_N(1) CNN_ADD_ROWS_N(2) CNN_ADD_ROWS_N(3) CNN_ADD_ROWS_N(4)       \
            CNN_ADD_ROWS_N(5) CNN_ADD_ROWS_N(6) CNN_ADD_ROWS_N(7) CNN_ADD_ROWS_N(8)       \
            CNN_ADD_ROWS_N(9) CNN_ADD_ROWS_N(10) CNN_ADD_ROWS_N(11) CNN_ADD_ROWS_N(12)    \
            CNN_ADD_ROWS_N(13) CNN_ADD_ROWS_N(14) CNN_ADD_ROWS_N(15) CNN_ADD_ROWS_N(16)   \
            default: CNN_ADD_ROWS_LOOP(n)                                                 \
            }                                                                             \
        } else {                                                                          \
            for (ptrdiff_t r = 0; r < rows; ++r, dst += dst_stride, src += src_stride) {  \
                CNN_SIMD for (ptrdiff_t k = 0; k < n; ++k) dst[k * step] += src[k];       \
            }                                                                             \
        }                                                                                 \
    }

/* acc[k] += sum of x[i] over i = k (mod CNN_LANES), i in [0, n): CNN_LANES independent
 * double partial sums (a single running sum is one long chain of dependent adds), always
 * in the same order. The caller adds the lanes up at the end. */
#define CNN_DEFINE_SUM_LANES(T, SUF)                                                       \
    static inline void cnn_sum_lanes_##SUF(double *restrict acc, const T *restrict x,    \
                                             ptrdiff_t n) {                               \
        double a[CNN_LANES];                                                              \
        ptrdiff_t i = 0, k;                                                               \
        for (k = 0; k < CNN_LANES; ++k) a[k] = acc[k];                                    \
        for (; i + CNN_LANES <= n; i += CNN_LANES)                                        \
            for (k = 0; k < CNN_LANES; ++k) a[k] += (double)x[i + k];                     \
        for (k = 0; i < n; ++i, ++k) a[k] += (double)x[i];                                \
        for (k = 0; k < CNN_LANES; ++k) acc[k] = a[k];                                    \
    }

/* ReLU family on a contiguous block, written as selects so that the compiler vectorises
 * them (a branchy loop mispredicts on random signs); dy is loaded unconditionally, or
 * without AVX masked loads the compiler falls back to branches. */
#define CNN_DEFINE_RELU(T, SUF)                                                            \
    static inline void cnn_leaky_relu_##SUF(T *restrict y, const T *restrict x,          \
                                              ptrdiff_t n, T slope) {                     \
        CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) y[i] = x[i] > 0 ? x[i] : x[i] * slope; \
    }                                                                                     \
    static inline void cnn_relu_##SUF(T *restrict y, const T *restrict x, ptrdiff_t n) {  \
        CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) y[i] = x[i] <= 0 ? (T)0 : x[i]; /* NaN stays NaN */ \
    }                                                                                     \
    static inline void cnn_relu_backward_##SUF(T *restrict dx, const T *restrict dy,     \
                                                 const T *restrict x, ptrdiff_t n) {      \
        CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) { T g = dy[i]; dx[i] = x[i] > 0 ? g : (T)0; } \
    }                                                                                     \
    static inline void cnn_leaky_relu_backward_##SUF(T *restrict dx, const T *restrict dy, \
                                                       const T *restrict x, ptrdiff_t n,   \
                                                       T slope) {                          \
        CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) { T g = dy[i]; dx[i] = x[i] > 0 ? g : g * slope; } \
    }

/* Direct (depthwise) convolution rows: y[i] += a * x[i * stride] (a strided axpy),
 * dx[i * stride] += a * dy[i] (its adjoint), and the strided dot product
 * sum_i a[i] * b[i * stride]. */
#define CNN_DEFINE_AXPY(T, SUF)                                                            \
    static inline void cnn_axpy_##SUF(T *restrict y, const T *restrict x, ptrdiff_t n,   \
                                        ptrdiff_t stride, T a) {                          \
        if (stride == 1) { CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) y[i] += a * x[i]; } \
        else { CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) y[i] += a * x[i * stride]; }    \
    }                                                                                     \
    static inline void cnn_scatter_axpy_##SUF(T *restrict dx, const T *restrict dy,      \
                                                ptrdiff_t n, ptrdiff_t stride, T a) {     \
        if (stride == 1) { CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) dx[i] += a * dy[i]; } \
        else { CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) dx[i * stride] += a * dy[i]; }  \
    }                                                                                     \
    static inline T cnn_dot_##SUF(const T *restrict a, const T *restrict b, ptrdiff_t n, \
                                    ptrdiff_t stride) {                                   \
        /* CNN_LANES partial sums added in a fixed order: vectorisable, and the same bits \
         * with or without OpenMP (an "omp simd reduction" would reorder only with it). */ \
        T acc[CNN_LANES] = {0};                                                           \
        ptrdiff_t i = 0, k;                                                               \
        for (; i + CNN_LANES <= n; i += CNN_LANES)                                        \
            for (k = 0; k < CNN_LANES; ++k) acc[k] += a[i + k] * b[(i + k) * stride];     \
        for (k = 0; i < n; ++i, ++k) acc[k] += a[i] * b[i * stride];                      \
        T s = 0;                                                                          \
        for (k = 0; k < CNN_LANES; ++k) s += acc[k];                                      \
        return s;                                                                         \
    }

/* Max-pooling rows: m[i] = max(m[i], x[i*stride]), NaN-propagating. */
#define CNN_DEFINE_MAXROW(T, SUF)                                                          \
    static inline void cnn_max_row_##SUF(T *restrict m, const T *restrict x, ptrdiff_t n, \
                                           ptrdiff_t stride) {                            \
        CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) {                                      \
            T v = x[i * stride];                                                          \
            m[i] = (v > m[i] || v != v) ? v : m[i];                                       \
        }                                                                                 \
    }

/* Max-pooling rows with the argmax: where x[i*stride] beats m[i], m[i] = x[i*stride] and
 * a[i] = tap (the tap's offset in the plane). Strict > keeps the first of equal values; the
 * first NaN wins and then stays (as numpy.argmax). */
#define CNN_DEFINE_MAXROW_ARG(T, SUF)                                                      \
    static inline void cnn_max_row_arg_##SUF(T *restrict m, int32_t *restrict a,         \
                                               const T *restrict x, ptrdiff_t n,          \
                                               ptrdiff_t stride, int32_t tap) {           \
        CNN_SIMD for (ptrdiff_t i = 0; i < n; ++i) {                                      \
            T v = x[i * stride], mi = m[i];                                               \
            int take = (v > mi) | ((v != v) & (mi == mi));                                \
            m[i] = take ? v : mi;                                                         \
            a[i] = take ? tap : a[i];                                                     \
        }                                                                                 \
    }

/* Max pooling 2x2, stride 2, unpadded, over one whole plane (H, W) -> (Ho, Wo), Ho = H/2 and
 * Wo = W/2 rounded down: one call per plane with the rows looped here (on rows of a few
 * outputs, per-row calls and loop set-up cost more than the maxima). The taps a b / c d of
 * each window are read directly and compared in row-major order, as cnn_max_row (larger or
 * NaN replaces) and cnn_max_row_arg (strictly larger, or NaN over a number, replaces: the
 * first maximum, the first NaN). The arg version leaves the winning tap's offset (0, 1, W
 * or W + 1) in a buffer of int32 (as wide as a float: gcc 12 vectorises the loop then,
 * with int64 it does not), then writes idx = h*W + w; W + 1 must fit in int32. Its test
 * "v beats m" is !(v <= m) && m == m: true if v > m, or v is NaN and m is not (a NaN m is
 * never beaten), one compare fewer than the spelled-out rule, 18% faster. It is written
 * with && and ! on _Bool: with int masks (as in cnn_max_row_arg) gcc 12 does not
 * if-convert this loop and branches on every comparison. */
#define CNN_DEFINE_MAXPOOL2(T, SUF)                                                        \
    static inline void cnn_max_pool_2x2_##SUF(T *restrict y, const T *restrict x,         \
                                                ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo) { \
        for (ptrdiff_t oh = 0; oh < Ho; ++oh) {                                           \
            const T *r0 = x + 2 * oh * W, *r1 = r0 + W;                                   \
            T *yr = y + oh * Wo;                                                          \
            CNN_SIMD for (ptrdiff_t j = 0; j < Wo; ++j) {                                 \
                T m = r0[2 * j], v = r0[2 * j + 1];                                       \
                m = (v > m || v != v) ? v : m;                                            \
                v = r1[2 * j];                                                            \
                m = (v > m || v != v) ? v : m;                                            \
                v = r1[2 * j + 1];                                                        \
                yr[j] = (v > m || v != v) ? v : m;                                        \
            }                                                                             \
        }                                                                                 \
    }

/* The arg version exists for float only: for double gcc 12 (SSE2) vectorises neither this
 * loop nor its variants tried (int64 taps, selects as bit operations), and the scalar code
 * is 3x slower than the row helpers cnn_max_row_arg_d, which pool.pyx uses instead. */
static inline void cnn_max_pool_2x2_arg_f(float *restrict y, int64_t *restrict idx,
                                          const float *restrict x, ptrdiff_t W, ptrdiff_t Ho,
                                          ptrdiff_t Wo) {
    int32_t tap[CNN_POOL_CHUNK];
    const int32_t w = (int32_t)W;
    for (ptrdiff_t oh = 0; oh < Ho; ++oh) {
        for (ptrdiff_t c0 = 0; c0 < Wo; c0 += CNN_POOL_CHUNK) {
            const ptrdiff_t n = Wo - c0 < CNN_POOL_CHUNK ? Wo - c0 : CNN_POOL_CHUNK;
            const float *r0 = x + 2 * oh * W + 2 * c0, *r1 = r0 + W;
            float *yr = y + oh * Wo + c0;
            int64_t *ir = idx + oh * Wo + c0;
            const int64_t base = 2 * oh * W + 2 * c0;
            CNN_SIMD for (ptrdiff_t j = 0; j < n; ++j) {
                float m = r0[2 * j], v = r0[2 * j + 1];
                int32_t k = 0;
                _Bool z = !(v <= m) && m == m;
                m = z ? v : m;
                k = z ? 1 : k;
                v = r1[2 * j];
                z = !(v <= m) && m == m;
                m = z ? v : m;
                k = z ? w : k;
                v = r1[2 * j + 1];
                z = !(v <= m) && m == m;
                yr[j] = z ? v : m;
                tap[j] = z ? w + 1 : k;
            }
            CNN_SIMD for (ptrdiff_t j = 0; j < n; ++j) ir[j] = base + 2 * j + tap[j];
        }
    }
}

CNN_DEFINE_MAXROW(float, f)
CNN_DEFINE_MAXROW(double, d)
CNN_DEFINE_MAXROW_ARG(float, f)
CNN_DEFINE_MAXROW_ARG(double, d)
CNN_DEFINE_MAXPOOL2(float, f)
CNN_DEFINE_MAXPOOL2(double, d)
CNN_DEFINE_AXPY(float, f)
CNN_DEFINE_AXPY(double, d)
CNN_DEFINE_RELU(float, f)
CNN_DEFINE_RELU(double, d)
CNN_DEFINE_GATHER_ROWS(float, f)
CNN_DEFINE_GATHER_ROWS(double, d)
CNN_DEFINE_SCATTER_ADD_ROWS(float, f)
CNN_DEFINE_SCATTER_ADD_ROWS(double, d)
CNN_DEFINE_SUM_LANES(float, f)
CNN_DEFINE_SUM_LANES(double, d)

/* Flush-to-zero / denormals-are-zero for the calling thread (x86 MXCSR bits 15 and 6).
 * Returns the previous MXCSR value so the caller can restore it; a no-op returning 0 elsewhere. */
static inline unsigned int cnn_set_flush_denormals(int enable) {
#if CNN_HAVE_MXCSR
    unsigned int old = _mm_getcsr();
    unsigned int bits = 0x8040u;
    _mm_setcsr(enable ? (old | bits) : (old & ~bits));
    return old;
#else
    (void)enable;
    return 0u;
#endif
}

static inline void cnn_restore_mxcsr(unsigned int old) {
#if CNN_HAVE_MXCSR
    _mm_setcsr(old);
#else
    (void)old;
#endif
}

#endif /* CNNCORE_SIMD_H */

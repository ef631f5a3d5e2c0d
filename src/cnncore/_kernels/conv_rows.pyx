"""Direct convolution over output rows, for few input channels on large images.

``y[n, o, oh, ow] = bias[o] + sum over (c, i, j) of w[o, c, i, j] * x[n, c, oh*sh - ph +
i*dh, ow*sw - pw + j*dw]`` (zero outside the image), computed row by row by the register-
blocked kernels of csrc/cnncore_conv_rows.h: for each output row, the input rows it reads
are first copied, padded and split into stride phases, into a per-thread buffer (``work``)
so that every tap is a contiguous run; then strips of the row are accumulated for blocks
of output channels in vector registers.

Tasks are the ``N * Ho`` output rows (static schedule); each output element is computed
by one task, summing its taps in the fixed order (c, i, j) after the bias, so results are
bit-identical for any ``n_threads``. Ungrouped convolutions only.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange, parallel, threadid


cdef extern from "cnncore_conv_rows.h" nogil:
    enum: CNN_CR_PAD
    int cnn_cr_isa()
    int cnn_cr_block(int isa)
    void cnn_cr_row_f(int isa, float* y, Py_ssize_t ystride, Py_ssize_t Wo, Py_ssize_t Cout,
                      const float* xb, const Py_ssize_t* off, Py_ssize_t K, const float* wt,
                      const float* bp)
    void cnn_cr_row_d(int isa, double* y, Py_ssize_t ystride, Py_ssize_t Wo, Py_ssize_t Cout,
                      const double* xb, const Py_ssize_t* off, Py_ssize_t K, const double* wt,
                      const double* bp)
    void cnn_cr_pack_rows_f(float* xb, const float* x, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t kh, Py_ssize_t oh, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                            Py_ssize_t Wq)
    void cnn_cr_pack_rows_d(double* xb, const double* x, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t kh, Py_ssize_t oh, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                            Py_ssize_t Wq)
    void cnn_cr_pack_weights_f(float* wt, float* bp, const float* w, const float* bias,
                               Py_ssize_t Cout, Py_ssize_t K, Py_ssize_t OB)
    void cnn_cr_pack_weights_d(double* wt, double* bp, const double* w, const double* bias,
                               Py_ssize_t Cout, Py_ssize_t K, Py_ssize_t OB)


#: The widest instruction set the row kernels use on this CPU (2: AVX-512F, 1: AVX2 + FMA,
#: 0: the baseline).
ISA = cnn_cr_isa()


def row_width(Py_ssize_t Wo, Py_ssize_t kw, int sw, int dw):
    """``Wq``: the length of one phase of a packed input row (see csrc/cnncore_conv_rows.h):
    the output row rounded up to whole vectors, plus the reach of the taps."""
    return (Wo + CNN_CR_PAD - 1) // CNN_CR_PAD * CNN_CR_PAD + (kw - 1) * dw // sw


def work_size(Py_ssize_t C, Py_ssize_t kh, Py_ssize_t Wq, int sw):
    """Elements of one thread's packed rows: ``C * kh`` input rows of ``sw`` phases."""
    return C * kh * sw * Wq


cdef inline void _pack_rows(floating* xb, const floating* x, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t kh, Py_ssize_t oh, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                            Py_ssize_t Wq) noexcept nogil:
    if floating is float:
        cnn_cr_pack_rows_f(xb, x, C, H, W, kh, oh, sh, sw, ph, pw, dh, Wq)
    else:
        cnn_cr_pack_rows_d(xb, x, C, H, W, kh, oh, sh, sw, ph, pw, dh, Wq)


cdef inline void _row(int isa, floating* y, Py_ssize_t ystride, Py_ssize_t Wo,
                      Py_ssize_t Cout, const floating* xb, const Py_ssize_t* off,
                      Py_ssize_t K, const floating* wt, const floating* bp) noexcept nogil:
    if floating is float:
        cnn_cr_row_f(isa, y, ystride, Wo, Cout, xb, off, K, wt, bp)
    else:
        cnn_cr_row_d(isa, y, ystride, Wo, Cout, xb, off, K, wt, bp)


def forward(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
            const floating[:, :, :, ::1] w,     # IN  (C_out, C, kh, kw)
            const floating[::1] bias,           # IN  (C_out,) or (0,) for none
            floating[:, :, :, ::1] y,           # OUT (N, C_out, Ho, Wo)
            floating[:, ::1] work,              # scratch (n_threads, >= work_size(...))
            int sh, int sw, int ph, int pw, int dh, int dw, int n_threads, int isa=-1):
    """Forward convolution into ``y``, one task per output row.

    Parameters
    ----------
    work : (n_threads, >= C*kh*sw*Wq) scratch, ``Wq = row_width(Wo, kw, sw, dw)``.
    isa : int
        Instruction-set level of the row kernel (``-1``: the widest this CPU has, see
        :data:`ISA`; a larger value is lowered to it). The levels sum in the same order
        but round differently (fused multiply-adds).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Cout = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], K = C * kh * kw
    if w.shape[1] != C or y.shape[0] != N or y.shape[1] != Cout:
        raise ValueError("conv_rows.forward: inconsistent shapes (groups are not supported)")
    if isa < 0 or isa > ISA:
        isa = ISA
    cdef Py_ssize_t OB = cnn_cr_block(isa), nob = (Cout + OB - 1) // OB
    cdef Py_ssize_t Wq = row_width(Wo, kw, sw, dw)
    if work.shape[0] < n_threads or work.shape[1] < work_size(C, kh, Wq, sw):
        raise ValueError("conv_rows.forward: work is too small")
    dtype = np.asarray(x).dtype
    cdef floating[::1] wt = np.empty(nob * OB * K, dtype=dtype)
    cdef floating[::1] bp = np.empty(nob * OB, dtype=dtype)
    cdef Py_ssize_t[::1] off = np.empty(K, dtype=np.intp)
    cdef Py_ssize_t c, i, j, t, task, n, oh
    for c in range(C):  # tap (c, i, j): phase (j*dw) % sw of row (c, i), shifted (j*dw) // sw
        for i in range(kh):
            for j in range(kw):
                off[(c * kh + i) * kw + j] = (((c * kh + i) * sw + (j * dw) % sw) * Wq
                                              + (j * dw) // sw)
    if floating is float:
        cnn_cr_pack_weights_f(&wt[0], &bp[0], &w[0, 0, 0, 0],
                              &bias[0] if bias.shape[0] > 0 else NULL, Cout, K, OB)
    else:
        cnn_cr_pack_weights_d(&wt[0], &bp[0], &w[0, 0, 0, 0],
                              &bias[0] if bias.shape[0] > 0 else NULL, Cout, K, OB)
    cdef floating* xb = NULL  # set per thread below (NULL: no maybe-uninitialized warning)
    with nogil, parallel(num_threads=n_threads):
        xb = &work[threadid(), 0]
        for task in prange(N * Ho, schedule='static'):
            n = task // Ho
            oh = task % Ho
            _pack_rows(xb, &x[n, 0, 0, 0], C, H, W, kh, oh, sh, sw, ph, pw, dh, Wq)
            _row(isa, &y[n, 0, oh, 0], Ho * Wo, Wo, Cout, xb, &off[0], K, &wt[0], &bp[0])

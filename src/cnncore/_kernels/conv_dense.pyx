"""The convolution matrix of a tiny map (``planner.use_dense``): when every output of a
convolution reads the whole input, ``y (N, C_out*Ho*Wo) = x (N, C_in*H*W) @ W'^T`` with

    W'[(o, a, b), (c, i, j)] = w[o, c, tap_h[a, i], tap_w[b, j]]

where ``tap_h[a, i]`` is the kernel row that puts input row ``i`` under output row ``a``
(``i = a*sh - ph + ki*dh``; every entry exists, see ``functional.planner.dense_taps``).
:func:`conv_matrix` builds ``W'`` (the input gradient ``dx = dy @ W'`` reads it as it is,
dense.linear_forward_wide); :func:`weight_grad` computes ``dW' = dy^T @ x`` in fixed blocks of output channels
and folds each entry back onto its tap: ``dw[o, c, ki, kj] = sum of dW'`` over the ``(a, b,
i, j)`` with that tap, in a fixed order (bit-identical at any thread count).
"""
from libc.string cimport memset
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

from cnncore._kernels._blas cimport _gemm, NoTrans, Trans

cdef enum:
    OUT_BLOCK = 16  # output channels per weight-gradient GEMM (a shape-only choice)

OUT_BLOCK_SIZE = OUT_BLOCK


def _check_taps(const int[:, ::1] tap_h, const int[:, ::1] tap_w, Py_ssize_t kh,
                Py_ssize_t kw):
    cdef Py_ssize_t a, i
    for a in range(tap_h.shape[0]):
        for i in range(tap_h.shape[1]):
            if not 0 <= tap_h[a, i] < kh:
                raise ValueError(f"conv_dense: tap_h[{a}, {i}] = {tap_h[a, i]} not in [0, {kh})")
    for a in range(tap_w.shape[0]):
        for i in range(tap_w.shape[1]):
            if not 0 <= tap_w[a, i] < kw:
                raise ValueError(f"conv_dense: tap_w[{a}, {i}] = {tap_w[a, i]} not in [0, {kw})")


def conv_matrix(const floating[:, :, :, ::1] w,   # IN  (C_out, C_in, kh, kw)
                floating[:, ::1] out,            # OUT (C_out*Ho*Wo, C_in*H*W)
                const int[:, ::1] tap_h,         # IN  (Ho, H)
                const int[:, ::1] tap_w,         # IN  (Wo, W)
                int n_threads):
    """``out = W'``, rows written contiguously, one output channel per task (the input
    gradient reads ``W'`` as it is: building ``W'^T`` instead, column by column, took 2.4x
    as long)."""
    cdef Py_ssize_t O = w.shape[0], C = w.shape[1]
    cdef Py_ssize_t Ho = tap_h.shape[0], H = tap_h.shape[1]
    cdef Py_ssize_t Wo = tap_w.shape[0], W = tap_w.shape[1]
    cdef Py_ssize_t M = O * Ho * Wo, K = C * H * W
    cdef Py_ssize_t o, c, a, b, i, j
    cdef floating* row
    _check_taps(tap_h, tap_w, w.shape[2], w.shape[3])
    if out.shape[0] != M or out.shape[1] != K:
        raise ValueError(f"conv_matrix: out must be ({M}, {K}), got "
                         f"({out.shape[0]}, {out.shape[1]})")
    if M == 0 or K == 0:
        return
    for o in prange(O, nogil=True, schedule='static', num_threads=n_threads):
        for a in range(Ho):
            for b in range(Wo):
                row = &out[(o * Ho + a) * Wo + b, 0]
                for c in range(C):
                    for i in range(H):
                        for j in range(W):
                            row[(c * H + i) * W + j] = w[o, c, tap_h[a, i], tap_w[b, j]]


def work_size(Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t K):
    """Scratch elements per thread of :func:`weight_grad`: one block's rows of ``dW'``."""
    return OUT_BLOCK * Ho * Wo * K


def weight_grad(const floating[:, ::1] dy,        # IN  (N, C_out*Ho*Wo)
                const floating[:, ::1] x,         # IN  (N, C_in*H*W)
                floating[:, :, :, ::1] dw,        # OUT (C_out, C_in, kh, kw)
                const int[:, ::1] tap_h,          # IN  (Ho, H)
                const int[:, ::1] tap_w,          # IN  (Wo, W)
                floating[:, ::1] work,            # scratch (n_threads, >= work_size(...))
                int n_threads):
    """``dw`` from ``dW' = dy^T @ x``: blocks of OUT_BLOCK output channels, each one GEMM
    (the batch reduced inside BLAS, the same call at any thread count) and a fold onto the
    taps in the order (a, b, c, i, j)."""
    cdef Py_ssize_t N = x.shape[0], O = dw.shape[0], C = dw.shape[1]
    cdef Py_ssize_t kh = dw.shape[2], kw = dw.shape[3]
    cdef Py_ssize_t Ho = tap_h.shape[0], H = tap_h.shape[1]
    cdef Py_ssize_t Wo = tap_w.shape[0], W = tap_w.shape[1]
    cdef Py_ssize_t P = Ho * Wo, K = C * H * W, M = O * Ho * Wo
    cdef Py_ssize_t n_blocks = (O + OUT_BLOCK - 1) // OUT_BLOCK
    cdef Py_ssize_t blk, o0, o1, o, a, b, c, i, j, tid = 0
    cdef floating* buf = NULL
    cdef floating* d
    cdef const floating* g
    _check_taps(tap_h, tap_w, kh, kw)
    if dy.shape[0] != N or dy.shape[1] != M or x.shape[1] != K:
        raise ValueError(f"conv_dense.weight_grad: dy ({dy.shape[0]}, {dy.shape[1]}) and x "
                         f"({x.shape[0]}, {x.shape[1]}) do not match ({N}, {M}), ({N}, {K})")
    if work.shape[0] < n_threads or work.shape[1] < OUT_BLOCK * P * K:
        raise ValueError("conv_dense.weight_grad: work is too small")
    if O == 0 or C == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        buf = &work[tid, 0]
        for blk in prange(n_blocks, schedule='static'):
            o0 = blk * OUT_BLOCK
            o1 = min(o0 + OUT_BLOCK, O)
            memset(&dw[o0, 0, 0, 0], 0, (o1 - o0) * C * kh * kw * sizeof(floating))
            if N == 0:
                continue
            # rows (o, a, b) of dW' for o in [o0, o1): dy[:, o0*P : o1*P]^T @ x
            _gemm(Trans, NoTrans, <int> ((o1 - o0) * P), <int> K, <int> N, <floating> 1,
                  &dy[0, o0 * P], <int> M, &x[0, 0], <int> K, <floating> 0, buf, <int> K)
            for o in range(o0, o1):
                for a in range(Ho):
                    for b in range(Wo):
                        g = buf + (((o - o0) * Ho + a) * Wo + b) * K
                        for c in range(C):
                            d = &dw[o, c, 0, 0]
                            for i in range(H):
                                for j in range(W):
                                    d[tap_h[a, i] * kw + tap_w[b, j]] += g[(c * H + i) * W + j]

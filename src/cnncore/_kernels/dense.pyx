"""Fully connected (linear) layer: ``y = x @ w.T + b`` with w of shape (out, in).

The GEMMs are cut into blocks of a fixed size (independent of the thread count), one
single-threaded BLAS call per block, spread over OpenMP threads: every output element is
computed by the same call whatever ``n_threads`` is, so results are bit-identical.

Forward: blocks of BLOCK rows by BLOCK output columns, so that a batch of 64 still gives
two threads work (LeNet's 64 x 400 -> 120). Backward: dx in blocks of BLOCK rows and
dw (with db) in blocks of DW_BLOCK outputs, all in one parallel region: LeNet's layers
are then one dx task and one dw task, an even split for two threads.
"""
from cython cimport floating
from cython.parallel cimport prange

from cnncore._kernels._blas cimport (_gemm, NoTrans, Trans, _pgemm, _pgemm_pack,
                                      CNN_PGEMM_ROWS, cnn_pgemm_rows)

cdef enum:
    BLOCK = 64      # rows (and forward output columns) per GEMM block
    DW_BLOCK = 128  # outputs per weight-gradient GEMM block
    # Largest batch of the packed weight-gradient products (linear_backward's ``packed``;
    # dy[:, block].T, DW_BLOCK x N, packed on the stack). 9216 -> 4096 backward added into
    # the gradients, 2 threads, packed / BLAS: batch 1 0.89, 4 0.95, 8 0.85, 16 0.98, 32 1.04
    PACKED_DW_MAX_BATCH = 16
    _DW_PACKED = (DW_BLOCK + CNN_PGEMM_ROWS - 1) // CNN_PGEMM_ROWS * CNN_PGEMM_ROWS * PACKED_DW_MAX_BATCH

MAX_PACKED_BATCH = PACKED_DW_MAX_BATCH


cdef void _forward_block(const floating* x, const floating* w, const floating* b,
                         bint has_bias, floating* y, Py_ssize_t rows, Py_ssize_t outs,
                         Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """y[rows, outs] = x[rows, :] @ w[outs, :].T (+ b[outs]); y has row stride n_out."""
    cdef Py_ssize_t r, o
    cdef floating beta = 0
    if has_bias:
        for r in range(rows):
            for o in range(outs):
                y[r * n_out + o] = b[o]
        beta = 1
    _gemm(NoTrans, Trans, <int> rows, <int> outs, <int> n_in, <floating> 1, x, <int> n_in,
          w, <int> n_in, beta, y, <int> n_out)


def linear_forward(const floating[:, ::1] x,   # IN  (N, in)
                   const floating[:, ::1] w,   # IN  (out, in)
                   const floating[::1] b,      # IN  (out,) or (0,) for none
                   floating[:, ::1] y,         # OUT (N, out)
                   int n_threads):
    cdef Py_ssize_t N = x.shape[0], n_in = x.shape[1], n_out = w.shape[0]
    cdef Py_ssize_t t, r0, c0
    cdef Py_ssize_t row_blocks = (N + BLOCK - 1) // BLOCK
    cdef Py_ssize_t col_blocks = (n_out + BLOCK - 1) // BLOCK
    cdef bint has_bias = b.shape[0] > 0
    for t in prange(row_blocks * col_blocks, nogil=True, schedule='static',
                    num_threads=n_threads):
        r0 = (t // col_blocks) * BLOCK
        c0 = (t % col_blocks) * BLOCK
        _forward_block(&x[r0, 0], &w[c0, 0], &b[c0] if has_bias else NULL, has_bias,
                       &y[r0, c0], min(BLOCK, N - r0), min(BLOCK, n_out - c0), n_in, n_out)


cdef void _grad_input_block(const floating* dy, const floating* w, floating* dx,
                            Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """dx[rows, :] = dy[rows, :] @ w."""
    _gemm(NoTrans, NoTrans, <int> rows, <int> n_in, <int> n_out, <floating> 1, dy,
          <int> n_out, w, <int> n_in, <floating> 0, dx, <int> n_in)


cdef void _grad_weight_block(const floating* dy, const floating* x, floating* dw,
                             Py_ssize_t N, Py_ssize_t outs, Py_ssize_t n_in,
                             Py_ssize_t n_out, bint add, bint packed) noexcept nogil:
    """dw[outs, :] = dy[:, outs].T @ x (``+=`` if ``add``): a sum over the batch in BLAS's
    fixed order, or with ``packed`` (N <= PACKED_DW_MAX_BATCH) by the packed GEMM, the
    block of dy^T packed as its left operand and x read in place: for a small batch the
    product is a pass over dw (K = N)."""
    cdef floating pk[_DW_PACKED]
    if packed:
        _pgemm_pack(pk, dy, outs, N, 1, 0, cnn_pgemm_rows(outs), n_out)
        _pgemm(outs, n_in, N, pk, N, x, n_in, NULL, dw, n_in, add)
        return
    _gemm(Trans, NoTrans, <int> outs, <int> n_in, <int> N, <floating> 1, dy, <int> n_out,
          x, <int> n_in, <floating> (1 if add else 0), dw, <int> n_in)


cdef void _column_sums(const floating* dy, Py_ssize_t N, Py_ssize_t outs, Py_ssize_t stride,
                       floating* out, bint add) noexcept nogil:
    """out[o] = sum_n dy[n * stride + o] (``+=`` if ``add``) for o < outs <= DW_BLOCK: each
    column summed in double, n in order, row by row (contiguous reads)."""
    cdef Py_ssize_t n, o
    cdef double acc[DW_BLOCK]
    for o in range(outs):
        acc[o] = 0
    for n in range(N):
        for o in range(outs):
            acc[o] = acc[o] + dy[n * stride + o]
    for o in range(outs):
        out[o] = <floating> (acc[o] + out[o]) if add else <floating> acc[o]


def linear_backward(const floating[:, ::1] dy,  # IN  (N, out)
                    const floating[:, ::1] x,   # IN  (N, in)
                    const floating[:, ::1] w,   # IN  (out, in)
                    floating[:, ::1] dx,        # OUT (N, in)
                    floating[:, ::1] dw,        # OUT (out, in)
                    floating[::1] db,           # OUT (out,)
                    int n_threads, bint accumulate=False, bint packed=False):
    """``dx = dy @ w``, ``dw = dy.T @ x``, ``db = dy.sum(0)``; with ``accumulate`` dw and db
    are added into (a layer's gradients, without a separate pass over them); ``packed``:
    dw by the packed GEMM (N <= MAX_PACKED_BATCH; see _grad_weight_block)."""
    if packed and x.shape[0] > PACKED_DW_MAX_BATCH:
        raise ValueError(f"linear_backward: packed needs a batch of at most "
                         f"{PACKED_DW_MAX_BATCH}, got {x.shape[0]}")
    cdef Py_ssize_t N = x.shape[0], n_in = x.shape[1], n_out = w.shape[0]
    cdef Py_ssize_t blk, r0, outs
    cdef Py_ssize_t row_blocks = (N + BLOCK - 1) // BLOCK
    cdef Py_ssize_t out_blocks = (n_out + DW_BLOCK - 1) // DW_BLOCK
    for blk in prange(row_blocks + out_blocks, nogil=True, schedule='static',
                      num_threads=n_threads):
        if blk < row_blocks:
            r0 = blk * BLOCK
            _grad_input_block(&dy[r0, 0], &w[0, 0], &dx[r0, 0], min(BLOCK, N - r0),
                              n_in, n_out)
        else:
            r0 = (blk - row_blocks) * DW_BLOCK
            outs = min(DW_BLOCK, n_out - r0)
            _grad_weight_block(&dy[0, r0], &x[0, 0], &dw[r0, 0], N, outs, n_in, n_out,
                               accumulate, packed)
            _column_sums(&dy[0, r0], N, outs, n_out, &db[r0], accumulate)


def linear_forward_wide(const floating[:, ::1] x,   # IN  (N, in)
                        const floating[:, ::1] w,   # IN  (out, in)
                        const floating[::1] b,      # IN  (out,) or (0,) for none
                        floating[:, ::1] y,         # OUT (N, out)
                        floating[:, ::1] yt,        # scratch (out, N)
                        int n_threads, Py_ssize_t col_block, bint w_in_out=False):
    """``y = x @ w.T + b`` for few rows and many outputs (conv's dense small-map path):
    blocks of ``col_block`` outputs, ``yt[block] = w[block] @ x.T`` (BLAS runs the product
    fastest with the few rows as its columns: 16 x 2048 x 2048 took 2.4 ms at 1 thread
    this way, 4.0 ms as ``x @ w[block].T``), then transposed into ``y`` with the bias
    added. Blocks depend on the shapes and ``col_block`` only: bit-identical at any thread
    count. ``w_in_out``: ``w`` is stored (in, out) and ``y = x @ w + b`` (the input gradient
    of conv's dense path, ``dx = dy @ W'``, without transposing ``W'``: 0.5 ms more GEMM at
    2048 x 2048, where building ``W'^T`` cost 2.5 ms more than ``W'``)."""
    cdef Py_ssize_t N = x.shape[0], n_in = x.shape[1]
    cdef Py_ssize_t n_out = w.shape[1] if w_in_out else w.shape[0]
    cdef Py_ssize_t t, c0, outs, r, o
    cdef Py_ssize_t col_blocks
    cdef bint has_bias = b.shape[0] > 0
    if col_block < 1:
        raise ValueError(f"linear_forward_wide: col_block must be >= 1, got {col_block}")
    if (w.shape[0] if w_in_out else w.shape[1]) != n_in:
        raise ValueError(f"linear_forward_wide: w ({w.shape[0]}, {w.shape[1]}) does not take "
                         f"{n_in} inputs")
    if yt.shape[0] < n_out or yt.shape[1] != N:
        raise ValueError(f"linear_forward_wide: yt must be ({n_out}, {N}), got "
                         f"({yt.shape[0]}, {yt.shape[1]})")
    if N == 0:
        return
    col_blocks = (n_out + col_block - 1) // col_block
    for t in prange(col_blocks, nogil=True, schedule='static', num_threads=n_threads):
        c0 = t * col_block
        outs = min(col_block, n_out - c0)
        if w_in_out:
            _gemm(Trans, Trans, <int> outs, <int> N, <int> n_in, <floating> 1, &w[0, c0],
                  <int> n_out, &x[0, 0], <int> n_in, <floating> 0, &yt[c0, 0], <int> N)
        else:
            _gemm(NoTrans, Trans, <int> outs, <int> N, <int> n_in, <floating> 1, &w[c0, 0],
                  <int> n_in, &x[0, 0], <int> n_in, <floating> 0, &yt[c0, 0], <int> N)
        if has_bias:
            for r in range(N):
                for o in range(outs):
                    y[r, c0 + o] = yt[c0 + o, r] + b[c0 + o]
        else:
            for r in range(N):
                for o in range(outs):
                    y[r, c0 + o] = yt[c0 + o, r]

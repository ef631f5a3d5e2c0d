"""Winograd F(2x2, 3x3) convolution for 3x3 kernels with stride 1 and dilation 1.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Each 2x2
output tile comes from a 4x4 input tile ``d`` as

    Y = A^T [ U ⊙ V ] A,   U = G g G^T (4x4, per filter),   V = B^T d B (4x4, per tile)

    B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
          [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
          [0 -1  1  0]         [1/2 -1/2  1/2]
          [0  1  0 -1]         [ 0    0    1 ]

and summing over input channels turns the 16 element-wise products into 16 GEMMs,
``M[xi] (C_out x T) = U[xi] (C_out x C_in) @ V[xi] (C_in x T)`` over the T tiles. That is
16 * C_out * C_in multiply-adds per 2x2 outputs instead of 36 * C_out * C_in (2.25x fewer
flops) and no im2col matrix (9x the input) to write and read back.

Layout: U (16, C_out, C_in); per task a block of ``nb`` samples whose tiles are numbered
``t = (s * TH + ty) * TW + tx`` (sample s of the block, tile row ty, tile column tx), with
``TH = ceil(Ho / 2)``, ``TW = ceil(Wo / 2)``. Blocks are fixed by the caller from the shapes
only and each block is done by one thread, so results do not depend on the thread count.
The input gradient of such a convolution is again one (flipped, transposed kernel,
padding 2 - p), so the backward pass reuses :func:`forward`; the weight gradient is 16 more
GEMMs over the same transformed tiles (:func:`weight_grad`).
"""
from libc.string cimport memset
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

from cnncore._kernels._blas cimport _gemm, NoTrans, Trans

cdef extern from "cnncore_winograd.h" nogil:
    void cnn_wino_split_row_f(float* dst, Py_ssize_t h, const float* src, Py_ssize_t n,
                              Py_ssize_t off)
    void cnn_wino_split_row_d(double* dst, Py_ssize_t h, const double* src, Py_ssize_t n,
                              Py_ssize_t off)
    void cnn_wino_input_row_f(const float* r, Py_ssize_t tw, float* e, float* v,
                              Py_ssize_t ps)
    void cnn_wino_input_row_d(const double* r, Py_ssize_t tw, double* e, double* v,
                              Py_ssize_t ps)
    void cnn_wino_output_row_f(const float* m, Py_ssize_t ps, Py_ssize_t tw, float b,
                               float* q, float* y0, float* y1, Py_ssize_t wo)
    void cnn_wino_output_row_d(const double* m, Py_ssize_t ps, Py_ssize_t tw, double b,
                               double* q, double* y0, double* y1, Py_ssize_t wo)
    void cnn_wino_grad_row_f(const float* r0, const float* r1, Py_ssize_t tw, float* D,
                             Py_ssize_t ps)
    void cnn_wino_grad_row_d(const double* r0, const double* r1, Py_ssize_t tw, double* D,
                             Py_ssize_t ps)


cdef inline void _split_row(floating* dst, Py_ssize_t h, const floating* src, Py_ssize_t n,
                            Py_ssize_t off) noexcept nogil:
    if floating is float:
        cnn_wino_split_row_f(dst, h, src, n, off)
    else:
        cnn_wino_split_row_d(dst, h, src, n, off)


cdef void _transform_filter(const floating* g, floating* u, Py_ssize_t stride) noexcept nogil:
    """u[xi * stride] = (G g G^T)[xi] for one 3x3 filter g (row-major)."""
    cdef floating t[4][3]
    cdef floating half = 0.5
    cdef Py_ssize_t i
    for i in range(3):  # t = G g (4x3)
        t[0][i] = g[i]
        t[1][i] = half * (g[i] + g[3 + i] + g[6 + i])
        t[2][i] = half * (g[i] - g[3 + i] + g[6 + i])
        t[3][i] = g[6 + i]
    for i in range(4):  # t G^T (4x4)
        u[(4 * i + 0) * stride] = t[i][0]
        u[(4 * i + 1) * stride] = half * (t[i][0] + t[i][1] + t[i][2])
        u[(4 * i + 2) * stride] = half * (t[i][0] - t[i][1] + t[i][2])
        u[(4 * i + 3) * stride] = t[i][2]


def transform_weights(const floating[:, :, :, ::1] w,   # IN  (C_out, C_in, 3, 3)
                      floating[:, :, ::1] U,             # OUT (16, C_out, C_in)
                      int n_threads):
    """``U[:, o, c] = G w[o, c] G^T``, flattened row-major."""
    cdef Py_ssize_t O = w.shape[0], C = w.shape[1], o, c
    for o in prange(O, nogil=True, schedule='static', num_threads=n_threads):
        for c in range(C):
            _transform_filter(&w[o, c, 0, 0], &U[0, o, c], O * C)


cdef struct Tiles:
    Py_ssize_t C, H, W, O, Ho, Wo, ph, pw
    Py_ssize_t TH, TW, Hp, Wp      # tiles per column/row; padded input plane
    Py_ssize_t nb, T               # samples per block; tiles per block (nb * TH * TW)


cdef Tiles _tiles(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O, Py_ssize_t Ho,
                  Py_ssize_t Wo, int ph, int pw, int nb):
    cdef Tiles g
    g.C, g.H, g.W, g.O, g.Ho, g.Wo, g.ph, g.pw = C, H, W, O, Ho, Wo, ph, pw
    g.TH, g.TW = (Ho + 1) // 2, (Wo + 1) // 2
    g.Hp, g.Wp = 2 * g.TH + 2, 2 * g.TW + 2
    g.nb = nb
    g.T = nb * g.TH * g.TW
    return g


cdef void _pad_sample(const Tiles* g, const floating* x, floating* xp) noexcept nogil:
    """Copy one (C, H, W) sample into the zero-padded (C, Hp, Wp) plane stack ``xp``, with
    the image at offset (ph, pw); Hp = 2*TH + 2 and Wp = 2*TW + 2 cover every tile. Each
    row is stored split, even columns first (see cnn_wino_split_row)."""
    cdef Py_ssize_t c, h, rows = g.H, cols = g.W
    if rows > g.Hp - g.ph:
        rows = g.Hp - g.ph
    if cols > g.Wp - g.pw:
        cols = g.Wp - g.pw
    memset(xp, 0, g.C * g.Hp * g.Wp * sizeof(floating))
    for c in range(g.C):
        for h in range(rows):
            _split_row(xp + (c * g.Hp + h + g.ph) * g.Wp, g.Wp // 2,
                       x + (c * g.H + h) * g.W, cols, g.pw)


cdef void _input_transform(const Tiles* g, const floating* xp, Py_ssize_t s,
                           floating* V, floating* scratch) noexcept nogil:
    """V[xi, c, tiles of sample s] = B^T d B for every tile d of the padded sample ``xp``
    (one tile row at a time, csrc/cnncore_winograd.h)."""
    cdef Py_ssize_t c, ty
    cdef const floating* r
    cdef floating* v
    for c in range(g.C):
        for ty in range(g.TH):
            r = xp + (c * g.Hp + 2 * ty) * g.Wp  # rows 2ty .. 2ty+3 of the padded plane
            v = V + c * g.T + (s * g.TH + ty) * g.TW
            if floating is float:
                cnn_wino_input_row_f(r, g.TW, scratch, v, g.C * g.T)
            else:
                cnn_wino_input_row_d(r, g.TW, scratch, v, g.C * g.T)


cdef void _output_transform(const Tiles* g, const floating* M, Py_ssize_t s,
                            const floating* bias, bint has_bias,
                            floating* y, floating* scratch) noexcept nogil:
    """y[o] of sample s = A^T m A (+ bias) for every tile m of M (16, O, T); an odd Ho or
    Wo drops the last row or column of the last tiles."""
    cdef Py_ssize_t o, ty
    cdef const floating* m
    cdef floating* y0
    cdef floating* y1
    cdef floating b = 0
    for o in range(g.O):
        if has_bias:
            b = bias[o]
        for ty in range(g.TH):
            m = M + o * g.T + (s * g.TH + ty) * g.TW
            y0 = y + (o * g.Ho + 2 * ty) * g.Wo
            y1 = y0 + g.Wo if 2 * ty + 1 < g.Ho else NULL
            if floating is float:
                cnn_wino_output_row_f(m, g.O * g.T, g.TW, b, scratch, y0, y1, g.Wo)
            else:
                cnn_wino_output_row_d(m, g.O * g.T, g.TW, b, scratch, y0, y1, g.Wo)


cdef void _forward_block(const Tiles* g, const floating* x, Py_ssize_t n0, Py_ssize_t n1,
                         const floating* U, const floating* bias, bint has_bias,
                         floating* y, floating* work) noexcept nogil:
    """Samples [n0, n1): transforms of every tile, 16 GEMMs over all their tiles, inverse
    transforms into y."""
    cdef Py_ssize_t s, xi
    cdef int n_cols = <int> ((n1 - n0) * g.TH * g.TW)  # a last, short block leaves V's tail unused
    cdef floating* V = work
    cdef floating* M = V + 16 * g.C * g.T
    cdef floating* xp = M + 16 * g.O * g.T
    cdef floating* rows = xp + g.C * g.Hp * g.Wp
    for s in range(n1 - n0):
        _pad_sample(g, x + (n0 + s) * g.C * g.H * g.W, xp)
        _input_transform(g, xp, s, V, rows)
    for xi in range(16):
        _gemm(NoTrans, NoTrans, <int> g.O, n_cols, <int> g.C, <floating> 1,
              U + xi * g.O * g.C, <int> g.C, V + xi * g.C * g.T, <int> g.T, <floating> 0,
              M + xi * g.O * g.T, <int> g.T)
    for s in range(n1 - n0):
        _output_transform(g, M, s, bias, has_bias, y + (n0 + s) * g.O * g.Ho * g.Wo, rows)


def work_size(Py_ssize_t C, Py_ssize_t O, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t nb):
    """Scratch elements one thread needs for a block of ``nb`` samples: V, M, a padded
    sample and the row buffers."""
    cdef Py_ssize_t TH = (Ho + 1) // 2, TW = (Wo + 1) // 2
    cdef Py_ssize_t T = nb * TH * TW
    return 16 * (C + O) * T + C * (2 * TH + 2) * (2 * TW + 2) + 4 * (2 * TW + 2)


def forward(const floating[:, :, :, ::1] x,     # IN  (N, C_in, H, W)
            const floating[:, :, ::1] U,         # IN  (16, C_out, C_in), transform_weights
            const floating[::1] bias,            # IN  (C_out,) or (0,) for none
            floating[:, :, :, ::1] y,            # OUT (N, C_out, H + 2ph - 2, W + 2pw - 2)
            floating[:, ::1] work,               # scratch (n_threads, >= work_size(...))
            int ph, int pw, int nb, int n_threads):
    """3x3 stride-1 convolution of x with the transformed weights U; blocks of ``nb``
    samples are split over ``n_threads`` threads."""
    cdef Tiles g = _tiles(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                          y.shape[3], ph, pw, nb)
    cdef Py_ssize_t N = x.shape[0], n_blocks = (N + nb - 1) // nb
    cdef Py_ssize_t blk, n1, tid = 0
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating* buf = NULL
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        buf = &work[tid, 0]
        for blk in prange(n_blocks, schedule='static'):
            n1 = (blk + 1) * nb
            if n1 > N:
                n1 = N
            _forward_block(&g, &x[0, 0, 0, 0], blk * nb, n1, &U[0, 0, 0], &bias[0],
                           has_bias, &y[0, 0, 0, 0], buf)


# ----------------------------------------------------------------------------- weight gradient
#
# With M_t = U ⊙ V_t and y_t = A^T M_t A, the loss gradient of M_t is A dy_t A^T (dy_t: the
# 2x2 output-gradient tile), so dU[xi] (C_out x C_in) = sum over tiles of
# (A dy_t A^T)[xi] V_t[xi]^T — again 16 GEMMs, reducing over the tiles — and
# dw[o, c] = G^T dU[:, o, c] G.

cdef void _pad_grad(const Tiles* g, const floating* dy, floating* dyp) noexcept nogil:
    """Copy one (O, Ho, Wo) output gradient into the zero-padded (O, 2*TH, 2*TW) ``dyp``,
    rows stored split (even columns first), so that a partial last tile row or column
    reads zeros."""
    cdef Py_ssize_t o, h
    cdef Py_ssize_t Hq = 2 * g.TH, Wq = 2 * g.TW
    memset(dyp, 0, g.O * Hq * Wq * sizeof(floating))
    for o in range(g.O):
        for h in range(g.Ho):
            _split_row(dyp + (o * Hq + h) * Wq, g.TW, dy + (o * g.Ho + h) * g.Wo, g.Wo, 0)


cdef void _grad_transform(const Tiles* g, const floating* dyp, Py_ssize_t s,
                          floating* D) noexcept nogil:
    """D[xi, o, tiles of sample s] = A dy_t A^T for every 2x2 tile dy_t of the padded,
    split output gradient ``dyp`` (csrc/cnncore_winograd.h)."""
    cdef Py_ssize_t o, ty
    cdef Py_ssize_t Wq = 2 * g.TW
    cdef const floating* r0
    cdef floating* v
    for o in range(g.O):
        for ty in range(g.TH):
            r0 = dyp + (o * 2 * g.TH + 2 * ty) * Wq
            v = D + o * g.T + (s * g.TH + ty) * g.TW
            if floating is float:
                cnn_wino_grad_row_f(r0, r0 + Wq, g.TW, v, g.O * g.T)
            else:
                cnn_wino_grad_row_d(r0, r0 + Wq, g.TW, v, g.O * g.T)


cdef void _weight_grad_chunk(const Tiles* g, const floating* x, const floating* dy,
                             Py_ssize_t n0, Py_ssize_t n1, floating* dU,
                             floating* work) noexcept nogil:
    """dU (16, O, C) = sum over samples [n0, n1), in order, in blocks of nb samples."""
    cdef Py_ssize_t b0, b1, s, xi
    cdef int n_cols
    cdef floating beta
    cdef floating* V = work
    cdef floating* D = V + 16 * g.C * g.T
    cdef floating* xp = D + 16 * g.O * g.T
    cdef floating* rows = xp + g.C * g.Hp * g.Wp  # transform scratch: 8 * (TW + 1)
    cdef floating* dyp = rows + 4 * g.Wp
    b0 = n0
    while b0 < n1:
        b1 = b0 + g.nb
        if b1 > n1:
            b1 = n1
        for s in range(b1 - b0):
            _pad_sample(g, x + (b0 + s) * g.C * g.H * g.W, xp)
            _input_transform(g, xp, s, V, rows)
            _pad_grad(g, dy + (b0 + s) * g.O * g.Ho * g.Wo, dyp)
            _grad_transform(g, dyp, s, D)
        n_cols = <int> ((b1 - b0) * g.TH * g.TW)
        beta = 0 if b0 == n0 else 1
        for xi in range(16):
            _gemm(NoTrans, Trans, <int> g.O, <int> g.C, n_cols, <floating> 1,
                  D + xi * g.O * g.T, <int> g.T, V + xi * g.C * g.T, <int> g.T, beta,
                  dU + xi * g.O * g.C, <int> g.C)
        b0 = b1


def backward_work_size(Py_ssize_t C, Py_ssize_t O, Py_ssize_t Ho, Py_ssize_t Wo,
                       Py_ssize_t nb):
    """Scratch elements one thread needs in :func:`weight_grad`."""
    cdef Py_ssize_t TH = (Ho + 1) // 2, TW = (Wo + 1) // 2
    return work_size(C, O, Ho, Wo, nb) + O * (2 * TH) * (2 * TW)


def weight_grad(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                const floating[:, :, :, ::1] dy,     # IN  (N, C_out, Ho, Wo)
                floating[:, :, :, ::1] dU_part,      # OUT (n_chunks, 16, C_out, C_in)
                floating[:, ::1] work,               # scratch (n_threads, backward_work_size)
                int ph, int pw, int nb, int n_threads):
    """Transformed weight gradient of each of ``n_chunks = dU_part.shape[0]`` fixed batch
    chunks (chunk c: samples [c*N//n_chunks, (c+1)*N//n_chunks)); add them in chunk order
    (conv.sum_chunks) and map back with :func:`untransform_weight_grad`."""
    cdef Tiles g = _tiles(x.shape[1], x.shape[2], x.shape[3], dy.shape[1], dy.shape[2],
                          dy.shape[3], ph, pw, nb)
    cdef Py_ssize_t N = x.shape[0], n_chunks = dU_part.shape[0]
    cdef Py_ssize_t chunk, tid = 0
    cdef floating* buf = NULL
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        buf = &work[tid, 0]
        for chunk in prange(n_chunks, schedule='static'):
            _weight_grad_chunk(&g, &x[0, 0, 0, 0], &dy[0, 0, 0, 0], chunk * N // n_chunks,
                               (chunk + 1) * N // n_chunks, &dU_part[chunk, 0, 0, 0], buf)


cdef void _untransform_filter(const floating* u, Py_ssize_t stride,
                              floating* dw) noexcept nogil:
    """dw (3x3, row-major) = G^T du G for the 4x4 du = u[xi * stride]."""
    cdef floating t[3][4]
    cdef floating half = 0.5
    cdef Py_ssize_t j
    for j in range(4):  # t = G^T du (3x4)
        t[0][j] = u[j * stride] + half * (u[(4 + j) * stride] + u[(8 + j) * stride])
        t[1][j] = half * (u[(4 + j) * stride] - u[(8 + j) * stride])
        t[2][j] = half * (u[(4 + j) * stride] + u[(8 + j) * stride]) + u[(12 + j) * stride]
    for j in range(3):  # t G (3x3)
        dw[3 * j] = t[j][0] + half * (t[j][1] + t[j][2])
        dw[3 * j + 1] = half * (t[j][1] - t[j][2])
        dw[3 * j + 2] = half * (t[j][1] + t[j][2]) + t[j][3]


def untransform_weight_grad(const floating[:, :, ::1] dU,   # IN  (16, C_out, C_in)
                            floating[:, :, :, ::1] dw,       # OUT (C_out, C_in, 3, 3)
                            int n_threads):
    """``dw[o, c] = G^T dU[:, o, c] G``: the adjoint of :func:`transform_weights`."""
    cdef Py_ssize_t O = dw.shape[0], C = dw.shape[1], o, c
    for o in prange(O, nogil=True, schedule='static', num_threads=n_threads):
        for c in range(C):
            _untransform_filter(&dU[0, o, c], O * C, &dw[o, c, 0, 0])

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
padding 2 - p), so the backward pass reuses :func:`forward`.
"""
from libc.string cimport memcpy, memset
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

from cnncore._kernels._blas cimport _gemm, NoTrans


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


cdef void _pad_sample(const Tiles* g, const floating* x, floating* xp) noexcept nogil:
    """Copy one (C, H, W) sample into the zero-padded (C, Hp, Wp) plane stack ``xp``, with
    the image at offset (ph, pw); Hp = 2*TH + 2 and Wp = 2*TW + 2 cover every tile."""
    cdef Py_ssize_t c, h, rows = g.H, cols = g.W
    if rows > g.Hp - g.ph:
        rows = g.Hp - g.ph
    if cols > g.Wp - g.pw:
        cols = g.Wp - g.pw
    memset(xp, 0, g.C * g.Hp * g.Wp * sizeof(floating))
    for c in range(g.C):
        for h in range(rows):
            memcpy(xp + (c * g.Hp + h + g.ph) * g.Wp + g.pw, x + (c * g.H + h) * g.W,
                   cols * sizeof(floating))


cdef void _input_transform(const Tiles* g, const floating* xp, Py_ssize_t s,
                           floating* V, floating* rows) noexcept nogil:
    """V[xi, c, tiles of sample s] = B^T d B for every tile d of the padded sample ``xp``.

    B^T is applied to four input rows at once over their whole width (``rows``: 4 x Wp),
    then B to every 4-column window at stride 2; both loops run along the row, so they
    vectorise."""
    cdef Py_ssize_t c, ty, tx, j, i, t0
    cdef Py_ssize_t CT = g.C * g.T, Wp = g.Wp
    cdef const floating* r
    cdef floating* s_i
    cdef floating* v
    for c in range(g.C):
        for ty in range(g.TH):
            r = xp + (c * g.Hp + 2 * ty) * Wp  # rows 2ty .. 2ty+3 of the padded plane
            for j in range(Wp):
                rows[j] = r[j] - r[2 * Wp + j]
                rows[Wp + j] = r[Wp + j] + r[2 * Wp + j]
                rows[2 * Wp + j] = r[2 * Wp + j] - r[Wp + j]
                rows[3 * Wp + j] = r[Wp + j] - r[3 * Wp + j]
            t0 = (s * g.TH + ty) * g.TW
            for i in range(4):
                s_i = rows + i * Wp
                v = V + 4 * i * CT + c * g.T + t0
                for tx in range(g.TW):
                    v[tx] = s_i[2 * tx] - s_i[2 * tx + 2]
                    v[CT + tx] = s_i[2 * tx + 1] + s_i[2 * tx + 2]
                    v[2 * CT + tx] = s_i[2 * tx + 2] - s_i[2 * tx + 1]
                    v[3 * CT + tx] = s_i[2 * tx + 1] - s_i[2 * tx + 3]


cdef void _output_transform(const Tiles* g, const floating* M, Py_ssize_t s,
                            const floating* bias, bint has_bias,
                            floating* y, floating* rows) noexcept nogil:
    """y[o] of sample s = A^T m A (+ bias) for every tile m of M (16, O, T).

    A^T is applied across the 16 planes for a whole tile row (q: 2 rows of 4 values per
    tile, stored 4 x TW), then A along it; the two output rows go through ``rows``
    (2 x 2*TW) so that an odd Ho or Wo just drops the last row or column."""
    cdef Py_ssize_t o, ty, tx, k, t0, oh, n_rows
    cdef Py_ssize_t OT = g.O * g.T, TW = g.TW
    cdef const floating* m
    cdef floating* q = rows + 4 * TW
    cdef floating b = 0
    for o in range(g.O):
        if has_bias:
            b = bias[o]
        for ty in range(g.TH):
            t0 = (s * g.TH + ty) * TW
            m = M + o * g.T + t0
            for k in range(4):  # q0k = m0k + m1k + m2k, q1k = m1k - m2k - m3k
                for tx in range(TW):
                    q[k * TW + tx] = m[k * OT + tx] + m[(4 + k) * OT + tx] + m[(8 + k) * OT + tx]
                    q[(4 + k) * TW + tx] = (m[(4 + k) * OT + tx] - m[(8 + k) * OT + tx]
                                            - m[(12 + k) * OT + tx])
            for k in range(2):
                for tx in range(TW):
                    rows[k * 2 * TW + 2 * tx] = (b + q[4 * k * TW + tx] + q[(4 * k + 1) * TW + tx]
                                                 + q[(4 * k + 2) * TW + tx])
                    rows[k * 2 * TW + 2 * tx + 1] = (b + q[(4 * k + 1) * TW + tx]
                                                     - q[(4 * k + 2) * TW + tx]
                                                     - q[(4 * k + 3) * TW + tx])
            n_rows = 2 if 2 * ty + 1 < g.Ho else 1
            for k in range(n_rows):
                oh = 2 * ty + k
                memcpy(y + (o * g.Ho + oh) * g.Wo, rows + k * 2 * TW, g.Wo * sizeof(floating))


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
    return 16 * (C + O) * T + C * (2 * TH + 2) * (2 * TW + 2) + 4 * (2 * TW + 2) + 8 * TW


def forward(const floating[:, :, :, ::1] x,     # IN  (N, C_in, H, W)
            const floating[:, :, ::1] U,         # IN  (16, C_out, C_in), transform_weights
            const floating[::1] bias,            # IN  (C_out,) or (0,) for none
            floating[:, :, :, ::1] y,            # OUT (N, C_out, H + 2ph - 2, W + 2pw - 2)
            floating[:, ::1] work,               # scratch (n_threads, >= work_size(...))
            int ph, int pw, int nb, int n_threads):
    """3x3 stride-1 convolution of x with the transformed weights U; blocks of ``nb``
    samples are split over ``n_threads`` threads."""
    cdef Tiles g
    g.C, g.H, g.W = x.shape[1], x.shape[2], x.shape[3]
    g.O, g.Ho, g.Wo = y.shape[1], y.shape[2], y.shape[3]
    g.ph, g.pw = ph, pw
    g.TH, g.TW = (g.Ho + 1) // 2, (g.Wo + 1) // 2
    g.Hp, g.Wp = 2 * g.TH + 2, 2 * g.TW + 2
    g.nb = nb
    g.T = nb * g.TH * g.TW
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

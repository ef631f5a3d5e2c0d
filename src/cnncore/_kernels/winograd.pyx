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

Layout: U (16, C_out, C_in); blocks of ``nb`` samples whose tiles are numbered
``t = (s * TH + ty) * TW + tx`` (sample s of the block, tile row ty, tile column tx), with
``TH = ceil(Ho / 2)``, ``TW = ceil(Wo / 2)``. Blocks are fixed by the caller from the shapes
only. With at least as many blocks as threads, each block is done by one thread; with
fewer (batch 1 on 2 threads), the blocks are done one after the other and the work of each
is split: the tile transforms over (sample, channel) planes, the 16 GEMMs over threads.
Either way every value is computed by the same operations in the same order (the same
GEMM calls), so results do not depend on the thread count nor on the mode.
The input gradient of such a convolution is again one (flipped, transposed kernel,
padding 2 - p), so the backward pass reuses :func:`forward`; the weight gradient is 16 more
GEMMs over the same transformed tiles (:func:`weight_grad`).
"""
from libc.string cimport memcpy, memset
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

from cnncore._kernels._blas cimport (_gemm, NoTrans, Trans, _pgemm, _pgemm_pack,
                                      _PACKED_MIN_COLS)
from cnncore._kernels._blas import packed_rows, PACKED_ROWS

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
    void cnn_wino_input_tiles_f(const float* xp, Py_ssize_t wp, Py_ssize_t th, Py_ssize_t tw,
                                float* v, Py_ssize_t ps)
    void cnn_wino_input_tiles_d(const double* xp, Py_ssize_t wp, Py_ssize_t th,
                                Py_ssize_t tw, double* v, Py_ssize_t ps)
    void cnn_wino_output_tiles_f(const float* m, Py_ssize_t ps, Py_ssize_t th, Py_ssize_t tw,
                                 float b, float* y, Py_ssize_t ho, Py_ssize_t wo)
    void cnn_wino_output_tiles_d(const double* m, Py_ssize_t ps, Py_ssize_t th,
                                 Py_ssize_t tw, double b, double* y, Py_ssize_t ho,
                                 Py_ssize_t wo)

# The products U[xi] @ V[xi] run on the packed-weight GEMM (_blas._pgemm) where it beats
# BLAS (_blas.PACKED, products of at least _PACKED_MIN_COLS columns) when the caller gives
# the packed weights (pack_weights).

# Filters per block in the weight transforms: the 16 planes of U are C_out * C_in apart,
# so writing them filter by filter hits the same cache sets 16 times (512 -> 512 channels:
# 24 ms); a block is transformed into a small buffer and copied out as 16 runs (~1 ms).
cdef enum:
    # Tile rows of at most this many tiles are transformed tile by tile (the row functions'
    # loop set-up costs more than their 1-2 tiles; at 4 tiles, 8x8 maps, tile by tile was
    # 1.3x slower; cnn_wino_input_tiles).
    _SMALL_TW = 2
    _FB = 64
    _TB = 32  # block edge of the transposes in transform_for_input_grad


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


cdef void _transform_row(const floating* w, Py_ssize_t C, floating* U,
                         Py_ssize_t plane) noexcept nogil:
    """U[xi * plane + c] = (G w[c] G^T)[xi] for the C filters (9 values each) of one output
    channel, _FB at a time through a buffer (see _FB)."""
    cdef floating buf[16 * _FB]
    cdef Py_ssize_t c0 = 0, c, n, xi
    while c0 < C:
        n = C - c0 if C - c0 < _FB else _FB
        for c in range(n):
            _transform_filter(w + 9 * (c0 + c), buf + c, _FB)
        for xi in range(16):
            memcpy(U + xi * plane + c0, buf + xi * _FB, n * sizeof(floating))
        c0 += n


def transform_weights(const floating[:, :, :, ::1] w,   # IN  (C_out, C_in, 3, 3)
                      floating[:, :, ::1] U,             # OUT (16, C_out, C_in)
                      int n_threads):
    """``U[:, o, c] = G w[o, c] G^T``, flattened row-major."""
    cdef Py_ssize_t O = w.shape[0], C = w.shape[1], o
    for o in prange(O, nogil=True, schedule='static', num_threads=n_threads):
        _transform_row(&w[o, 0, 0, 0], C, &U[0, o, 0], O * C)


def transform_for_input_grad(const floating[:, :, ::1] U,   # IN  (16, C_out, C_in)
                             floating[:, :, ::1] Ut,         # OUT (16, C_in, C_out)
                             int n_threads):
    """Transformed weights of the input gradient's convolution (kernel flipped, channels
    swapped: ``w'[c, o] = J w[o, c] J`` with J the 3x3 reversal) from those of the forward
    one. G J = P G with P the 4x4 permutation that swaps rows 0 and 3, so
    ``G w'[c, o] G^T = P U[:, o, c] P^T``: ``Ut[(i, j), c, o] = U[(p(i), p(j)), o, c]`` —
    16 blocked transposes instead of a flipped copy of w and a second transform."""
    cdef Py_ssize_t O = U.shape[1], C = U.shape[2]
    cdef Py_ssize_t n_cb = (C + _TB - 1) // _TB, task, xi
    for task in prange(16 * n_cb, nogil=True, schedule='static', num_threads=n_threads):
        xi = task // n_cb
        _transpose_rows(&U[_input_grad_plane(xi), 0, 0], O, C, (task % n_cb) * _TB,
                        &Ut[xi, 0, 0])


cdef inline Py_ssize_t _input_grad_plane(Py_ssize_t xi) noexcept nogil:
    """The plane of U whose transpose is plane ``xi`` = (i, j) of the input gradient's
    transformed weights: (p(i), p(j)), p swapping 0 and 3."""
    cdef Py_ssize_t i = xi // 4, j = xi % 4
    if i == 0 or i == 3:
        i = 3 - i
    if j == 0 or j == 3:
        j = 3 - j
    return 4 * i + j


def pack_weights(const floating[:, :, ::1] U,   # IN  (16, C_out, C_in)
                 floating[:, ::1] Up,            # OUT (16, packed_rows(rows) * cols)
                 int n_threads, bint for_input_grad=False):
    """The 16 planes of U packed for cnncore_gemm.h (blocks of rows, k-major), for the
    products of :func:`forward` given ``Up``: U's planes (rows C_out, columns C_in), or
    with ``for_input_grad`` those of the input gradient's convolution straight from U,
    plane ``xi`` being ``U[(p(i), p(j))]^T`` (see :func:`transform_for_input_grad`; rows
    C_in, columns C_out), without building the transposed U first (2.7 ms for 512 -> 512,
    then 0.9 ms to pack it)."""
    cdef Py_ssize_t O = U.shape[1], C = U.shape[2]
    cdef Py_ssize_t M = C if for_input_grad else O, K = O if for_input_grad else C
    cdef Py_ssize_t R = packed_rows(M), rows = PACKED_ROWS, n_rb = R // rows, task, xi, r0
    if Up.shape[0] != 16 or Up.shape[1] != R * K:
        raise ValueError(f"pack_weights: Up must be (16, {R * K}), got "
                         f"({Up.shape[0]}, {Up.shape[1]})")
    for task in prange(16 * n_rb, nogil=True, schedule='static', num_threads=n_threads):
        xi = task // n_rb
        r0 = (task % n_rb) * rows
        if not for_input_grad:
            _pgemm_pack(&Up[xi, 0], &U[xi, 0, 0], O, C, C, r0, r0 + rows)
        else:  # entry (c, o) of the transposed plane: rows 1 apart, k = o C apart
            _pgemm_pack(&Up[xi, 0], &U[_input_grad_plane(xi), 0, 0], C, O, 1, r0, r0 + rows, C)


cdef void _transpose_rows(const floating* a, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t c0,
                          floating* at) noexcept nogil:
    """at[c, r] = a[r, c] for columns [c0, c0 + _TB) of the (rows x cols) matrix a, through
    a _TB x _TB buffer filled by rows (reading _TB rows of a power-of-two length straight
    down a column would hit a couple of cache sets only)."""
    cdef floating buf[_TB * _TB]
    cdef Py_ssize_t nc = cols - c0 if cols - c0 < _TB else _TB, r0 = 0, nr, r, c
    while r0 < rows:
        nr = rows - r0 if rows - r0 < _TB else _TB
        for r in range(nr):
            memcpy(buf + r * _TB, a + (r0 + r) * cols + c0, nc * sizeof(floating))
        for c in range(nc):
            for r in range(nr):
                at[(c0 + c) * rows + r0 + r] = buf[r * _TB + c]
        r0 += nr


cdef struct Tiles:
    Py_ssize_t C, H, W, O, Ho, Wo, ph, pw
    Py_ssize_t TH, TW, Hp, Wp      # tiles per column/row; padded input plane
    Py_ssize_t nb, T               # samples per block; tiles per block (nb * TH * TW)
    const void* Up                 # packed U (pack_weights) or NULL: BLAS products
    Py_ssize_t up_plane            # elements per packed plane


cdef Tiles _tiles(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O, Py_ssize_t Ho,
                  Py_ssize_t Wo, int ph, int pw, int nb):
    cdef Tiles g
    g.C, g.H, g.W, g.O, g.Ho, g.Wo, g.ph, g.pw = C, H, W, O, Ho, Wo, ph, pw
    g.TH, g.TW = (Ho + 1) // 2, (Wo + 1) // 2
    g.Hp, g.Wp = 2 * g.TH + 2, 2 * g.TW + 2
    g.nb = nb
    g.T = nb * g.TH * g.TW
    g.Up = NULL
    g.up_plane = 0
    return g


cdef void _pad_plane(const Tiles* g, const floating* x, floating* xp,
                     bint split) noexcept nogil:
    """Copy one (H, W) plane into the zero-padded (Hp, Wp) plane ``xp``, with the image at
    offset (ph, pw); Hp = 2*TH + 2 and Wp = 2*TW + 2 cover every tile. With ``split`` each
    row is stored split, even columns first (see cnn_wino_split_row), else as it is."""
    cdef Py_ssize_t h, rows = g.H, cols = g.W
    if rows > g.Hp - g.ph:
        rows = g.Hp - g.ph
    if cols > g.Wp - g.pw:
        cols = g.Wp - g.pw
    memset(xp, 0, g.Hp * g.Wp * sizeof(floating))
    for h in range(rows):
        if split:
            _split_row(xp + (h + g.ph) * g.Wp, g.Wp // 2, x + h * g.W, cols, g.pw)
        else:
            memcpy(xp + (h + g.ph) * g.Wp + g.pw, x + h * g.W, cols * sizeof(floating))


cdef void _input_transform(const Tiles* g, const floating* x, Py_ssize_t c, Py_ssize_t s,
                           floating* V, floating* scratch) noexcept nogil:
    """V[xi, c, tiles of sample s] = B^T d B for every tile d of the (H, W) plane ``x``
    (channel c of sample s of the block), padded into ``scratch`` first, then one tile row
    at a time, or tile by tile on small maps (csrc/cnncore_winograd.h). scratch:
    plane_size elements."""
    cdef Py_ssize_t ty
    cdef floating* xp = scratch
    cdef floating* e = scratch + g.Hp * g.Wp
    cdef const floating* r
    cdef floating* v
    cdef bint small = g.TW <= _SMALL_TW  # tile by tile from a plain padded plane
    _pad_plane(g, x, xp, not small)
    if small:
        v = V + c * g.T + s * g.TH * g.TW
        if floating is float:
            cnn_wino_input_tiles_f(xp, g.Wp, g.TH, g.TW, v, g.C * g.T)
        else:
            cnn_wino_input_tiles_d(xp, g.Wp, g.TH, g.TW, v, g.C * g.T)
        return
    for ty in range(g.TH):
        r = xp + 2 * ty * g.Wp  # rows 2ty .. 2ty+3 of the padded plane
        v = V + c * g.T + (s * g.TH + ty) * g.TW
        if floating is float:
            cnn_wino_input_row_f(r, g.TW, e, v, g.C * g.T)
        else:
            cnn_wino_input_row_d(r, g.TW, e, v, g.C * g.T)


cdef void _output_transform(const Tiles* g, const floating* M, Py_ssize_t o, Py_ssize_t s,
                            floating b, floating* y, floating* scratch) noexcept nogil:
    """The (Ho, Wo) plane y (channel o of sample s) = A^T m A + b for every tile m of
    M (16, O, T); an odd Ho or Wo drops the last row or column of the last tiles."""
    cdef Py_ssize_t ty
    cdef const floating* m
    cdef floating* y0
    cdef floating* y1
    if g.TW <= _SMALL_TW:
        m = M + o * g.T + s * g.TH * g.TW
        if floating is float:
            cnn_wino_output_tiles_f(m, g.O * g.T, g.TH, g.TW, b, y, g.Ho, g.Wo)
        else:
            cnn_wino_output_tiles_d(m, g.O * g.T, g.TH, g.TW, b, y, g.Ho, g.Wo)
        return
    for ty in range(g.TH):
        m = M + o * g.T + (s * g.TH + ty) * g.TW
        y0 = y + 2 * ty * g.Wo
        y1 = y0 + g.Wo if 2 * ty + 1 < g.Ho else NULL
        if floating is float:
            cnn_wino_output_row_f(m, g.O * g.T, g.TW, b, scratch, y0, y1, g.Wo)
        else:
            cnn_wino_output_row_d(m, g.O * g.T, g.TW, b, scratch, y0, y1, g.Wo)


cdef inline void _products(const Tiles* g, Py_ssize_t xi, int n_cols, const floating* U,
                           const floating* V, floating* M) noexcept nogil:
    """M[xi] (O x n_cols) = U[xi] (O x C) @ V[xi] (C x n_cols): with the packed copy of U
    (g.Up) for at least _PACKED_MIN_COLS columns, else by BLAS."""
    if g.Up != NULL and n_cols >= _PACKED_MIN_COLS:
        _pgemm(g.O, n_cols, g.C, <const floating*> g.Up + xi * g.up_plane, g.C,
               V + xi * g.C * g.T, g.T, NULL, M + xi * g.O * g.T, g.T)
        return
    _gemm(NoTrans, NoTrans, <int> g.O, n_cols, <int> g.C, <floating> 1,
          U + xi * g.O * g.C, <int> g.C, V + xi * g.C * g.T, <int> g.T, <floating> 0,
          M + xi * g.O * g.T, <int> g.T)


cdef void _forward_block(const Tiles* g, const floating* x, Py_ssize_t n0, Py_ssize_t n1,
                         const floating* U, const floating* bias, bint has_bias,
                         floating* y, floating* V, floating* M,
                         floating* scratch) noexcept nogil:
    """Samples [n0, n1) on one thread: transforms of every tile, 16 GEMMs over all their
    tiles, inverse transforms into y."""
    cdef Py_ssize_t s, c, o, xi
    cdef int n_cols = <int> ((n1 - n0) * g.TH * g.TW)  # a last, short block leaves V's tail unused
    # Channels outside, samples inside: a channel's tiles of consecutive samples are
    # adjacent in V and M, so each cache line of them is filled (read) at once (samples
    # outside: 4x4 maps' transforms ran 1.3x slower, every line coming back 4 times).
    for c in range(g.C):
        for s in range(n1 - n0):
            _input_transform(g, x + ((n0 + s) * g.C + c) * g.H * g.W, c, s, V, scratch)
    for xi in range(16):
        _products(g, xi, n_cols, U, V, M)
    for o in range(g.O):
        for s in range(n1 - n0):
            _output_transform(g, M, o, s, bias[o] if has_bias else 0,
                              y + ((n0 + s) * g.O + o) * g.Ho * g.Wo, scratch)


def plane_size(Py_ssize_t Ho, Py_ssize_t Wo):
    """Scratch elements of one plane's transforms: a padded input plane and the row
    buffers, and a padded output-gradient plane."""
    cdef Py_ssize_t TH = (Ho + 1) // 2, TW = (Wo + 1) // 2
    return (2 * TH + 2) * (2 * TW + 2) + 4 * (2 * TW + 2) + (2 * TH) * (2 * TW)


def block_size(Py_ssize_t C, Py_ssize_t O, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t nb):
    """Elements of the transformed tiles and products of one block of ``nb`` samples."""
    return 16 * (C + O) * nb * ((Ho + 1) // 2) * ((Wo + 1) // 2)


def work_size(Py_ssize_t C, Py_ssize_t O, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t nb,
              bint split):
    """Scratch elements one thread needs in :func:`forward` or :func:`weight_grad`: its own
    block's tiles and products unless ``split`` (they are then shared, see ``shared``),
    and a plane's transform buffers."""
    return (0 if split else block_size(C, O, Ho, Wo, nb)) + plane_size(Ho, Wo)


def forward(const floating[:, :, :, ::1] x,     # IN  (N, C_in, H, W)
            const floating[:, :, ::1] U,         # IN  (16, C_out, C_in) or (0, 0, 0), see Up
            const floating[::1] bias,            # IN  (C_out,) or (0,) for none
            floating[:, :, :, ::1] y,            # OUT (N, C_out, H + 2ph - 2, W + 2pw - 2)
            floating[:, ::1] work,               # scratch (n_threads, >= work_size(...))
            floating[::1] shared,                # scratch (block_size(...),) if split, else (0,)
            int ph, int pw, int nb, int n_threads,
            const floating[:, ::1] Up=None):     # IN  pack_weights(U) or None: BLAS only
    """3x3 stride-1 convolution of x with the transformed weights U. Blocks of ``nb``
    samples are split over ``n_threads`` threads, or, when ``shared`` is not empty, done
    one after the other with each block's work split over the threads. With ``Up``, the
    packed copy of U, the products of at least _blas.PACKED_MIN_COLS columns use it; the
    others, and every product without it, use BLAS (U may then be empty when every block
    has that many columns)."""
    cdef Tiles g = _tiles(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                          y.shape[3], ph, pw, nb)
    cdef Py_ssize_t last = x.shape[0] - (x.shape[0] - 1) // nb * nb if x.shape[0] else nb
    if U.shape[0] == 0 and (Up is None or last * g.TH * g.TW < _PACKED_MIN_COLS
                            or nb * g.TH * g.TW < _PACKED_MIN_COLS):
        raise ValueError("forward: without U every block needs the packed products (Up, "
                         "blocks of at least _blas.PACKED_MIN_COLS tiles)")
    if Up is not None:
        if Up.shape[0] != 16 or Up.shape[1] != packed_rows(g.O) * g.C:
            raise ValueError(f"forward: Up must be (16, {packed_rows(g.O) * g.C}), got "
                             f"({Up.shape[0]}, {Up.shape[1]})")
        g.Up = &Up[0, 0]
        g.up_plane = Up.shape[1]
    cdef Py_ssize_t N = x.shape[0], n_blocks = (N + nb - 1) // nb
    cdef Py_ssize_t blk, n0, n1, task, s, c, o, xi, tid = 0
    cdef int n_cols
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating* buf = NULL
    cdef floating* V
    cdef floating* M
    cdef const floating* xs = &x[0, 0, 0, 0]
    cdef floating* ys = &y[0, 0, 0, 0]
    if shared.shape[0] == 0:
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            buf = &work[tid, 0]
            for blk in prange(n_blocks, schedule='static'):
                n1 = (blk + 1) * nb
                if n1 > N:
                    n1 = N
                _forward_block(&g, xs, blk * nb, n1, &U[0, 0, 0], &bias[0], has_bias, ys,
                               buf, buf + 16 * g.C * g.T, buf + 16 * (g.C + g.O) * g.T)
        return
    V = &shared[0]
    M = V + 16 * g.C * g.T
    with nogil:
        for blk in range(n_blocks):
            n0 = blk * nb
            n1 = n0 + nb if n0 + nb < N else N
            n_cols = <int> ((n1 - n0) * g.TH * g.TW)
            for task in prange((n1 - n0) * g.C, schedule='static', num_threads=n_threads):
                c = task // (n1 - n0)  # channel-major, as in _forward_block
                s = task % (n1 - n0)
                _input_transform(&g, xs + ((n0 + s) * g.C + c) * g.H * g.W, c, s, V,
                                 &work[threadid(), 0])
            for xi in prange(16, schedule='static', num_threads=n_threads):
                _products(&g, xi, n_cols, &U[0, 0, 0], V, M)
            for task in prange((n1 - n0) * g.O, schedule='static', num_threads=n_threads):
                o = task // (n1 - n0)
                s = task % (n1 - n0)
                _output_transform(&g, M, o, s, bias[o] if has_bias else 0,
                                  ys + ((n0 + s) * g.O + o) * g.Ho * g.Wo,
                                  &work[threadid(), 0])


# ----------------------------------------------------------------------------- weight gradient
#
# With M_t = U ⊙ V_t and y_t = A^T M_t A, the loss gradient of M_t is A dy_t A^T (dy_t: the
# 2x2 output-gradient tile), so dU[xi] (C_out x C_in) = sum over tiles of
# (A dy_t A^T)[xi] V_t[xi]^T — again 16 GEMMs, reducing over the tiles — and
# dw[o, c] = G^T dU[:, o, c] G.

cdef void _grad_transform(const Tiles* g, const floating* dy, Py_ssize_t o, Py_ssize_t s,
                          floating* D, floating* scratch) noexcept nogil:
    """D[xi, o, tiles of sample s] = A dy_t A^T for every 2x2 tile dy_t of the (Ho, Wo)
    plane ``dy`` (channel o of sample s), first copied into ``scratch`` zero-padded to
    (2*TH, 2*TW), rows stored split (even columns first), so that a partial last tile row
    or column reads zeros (csrc/cnncore_winograd.h). scratch: plane_size elements."""
    cdef Py_ssize_t h, ty
    cdef Py_ssize_t Hq = 2 * g.TH, Wq = 2 * g.TW
    cdef floating* dyp = scratch
    cdef const floating* r0
    cdef floating* v
    memset(dyp, 0, Hq * Wq * sizeof(floating))
    for h in range(g.Ho):
        _split_row(dyp + h * Wq, g.TW, dy + h * g.Wo, g.Wo, 0)
    for ty in range(g.TH):
        r0 = dyp + 2 * ty * Wq
        v = D + o * g.T + (s * g.TH + ty) * g.TW
        if floating is float:
            cnn_wino_grad_row_f(r0, r0 + Wq, g.TW, v, g.O * g.T)
        else:
            cnn_wino_grad_row_d(r0, r0 + Wq, g.TW, v, g.O * g.T)


cdef inline void _grad_products(const Tiles* g, Py_ssize_t xi, int n_cols, const floating* D,
                                const floating* V, floating beta,
                                floating* dU) noexcept nogil:
    """dU[xi] (O x C) = D[xi] (O x n_cols) @ V[xi]^T + beta * dU[xi]."""
    _gemm(NoTrans, Trans, <int> g.O, <int> g.C, n_cols, <floating> 1,
          D + xi * g.O * g.T, <int> g.T, V + xi * g.C * g.T, <int> g.T, beta,
          dU + xi * g.O * g.C, <int> g.C)


cdef void _weight_grad_chunk(const Tiles* g, const floating* x, const floating* dy,
                             Py_ssize_t n0, Py_ssize_t n1, floating* dU,
                             floating* work) noexcept nogil:
    """dU (16, O, C) = sum over samples [n0, n1), in order, in blocks of nb samples."""
    cdef Py_ssize_t b0, b1, s, c, o, xi
    cdef floating* V = work
    cdef floating* D = V + 16 * g.C * g.T
    cdef floating* scratch = D + 16 * g.O * g.T
    b0 = n0
    while b0 < n1:
        b1 = b0 + g.nb
        if b1 > n1:
            b1 = n1
        for c in range(g.C):  # channel-major, as in _forward_block
            for s in range(b1 - b0):
                _input_transform(g, x + ((b0 + s) * g.C + c) * g.H * g.W, c, s, V, scratch)
        for o in range(g.O):
            for s in range(b1 - b0):
                _grad_transform(g, dy + ((b0 + s) * g.O + o) * g.Ho * g.Wo, o, s, D, scratch)
        for xi in range(16):
            _grad_products(g, xi, <int> ((b1 - b0) * g.TH * g.TW), D, V,
                           0 if b0 == n0 else 1, dU)
        b0 = b1


def weight_grad(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                const floating[:, :, :, ::1] dy,     # IN  (N, C_out, Ho, Wo)
                floating[:, :, :, ::1] dU_part,      # OUT (n_chunks, 16, C_out, C_in)
                floating[:, ::1] work,               # scratch (n_threads, >= work_size(...))
                floating[::1] shared,                # scratch (block_size(...),) if split, else (0,)
                int ph, int pw, int nb, int n_threads):
    """Transformed weight gradient of each of ``n_chunks = dU_part.shape[0]`` fixed batch
    chunks (chunk c: samples [c*N//n_chunks, (c+1)*N//n_chunks)); add them in chunk order
    (reduce.sum_chunks) and map back with :func:`untransform_weight_grad`. Chunks are split
    over the threads, or, when ``shared`` is not empty, done one after the other with the
    transforms of each block and its 16 GEMMs split over the threads (same operations,
    same order)."""
    cdef Tiles g = _tiles(x.shape[1], x.shape[2], x.shape[3], dy.shape[1], dy.shape[2],
                          dy.shape[3], ph, pw, nb)
    cdef Py_ssize_t N = x.shape[0], n_chunks = dU_part.shape[0]
    cdef Py_ssize_t chunk, n0, n1, b0, b1, task, s, k, xi, tid = 0
    cdef int n_cols
    cdef floating beta
    cdef floating* buf = NULL
    cdef floating* V
    cdef floating* D
    cdef floating* dU
    cdef const floating* xs = &x[0, 0, 0, 0]
    cdef const floating* dys = &dy[0, 0, 0, 0]
    if shared.shape[0] == 0:
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            buf = &work[tid, 0]
            for chunk in prange(n_chunks, schedule='static'):
                _weight_grad_chunk(&g, xs, dys, chunk * N // n_chunks,
                                   (chunk + 1) * N // n_chunks, &dU_part[chunk, 0, 0, 0], buf)
        return
    V = &shared[0]
    D = V + 16 * g.C * g.T
    with nogil:
        for chunk in range(n_chunks):
            n0 = chunk * N // n_chunks
            n1 = (chunk + 1) * N // n_chunks
            dU = &dU_part[chunk, 0, 0, 0]
            b0 = n0
            while b0 < n1:
                b1 = b0 + nb if b0 + nb < n1 else n1
                for task in prange((b1 - b0) * (g.C + g.O), schedule='static',
                                   num_threads=n_threads):
                    k = task // (b1 - b0)  # channel-major, as in _forward_block
                    s = task % (b1 - b0)
                    if k < g.C:
                        _input_transform(&g, xs + ((b0 + s) * g.C + k) * g.H * g.W, k, s, V,
                                         &work[threadid(), 0])
                    else:
                        _grad_transform(&g, dys + ((b0 + s) * g.O + k - g.C) * g.Ho * g.Wo,
                                        k - g.C, s, D, &work[threadid(), 0])
                n_cols = <int> ((b1 - b0) * g.TH * g.TW)
                beta = 0 if b0 == n0 else 1
                for xi in prange(16, schedule='static', num_threads=n_threads):
                    _grad_products(&g, xi, n_cols, D, V, beta, dU)
                b0 = b1


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


cdef void _untransform_row(const floating* dU, Py_ssize_t plane, Py_ssize_t C,
                           floating* dw) noexcept nogil:
    """dw[c] (3x3) = G^T dU[:, c] G for the C filters of one output channel, whose 16
    transformed values are ``plane`` apart: _FB at a time through a buffer (see _FB)."""
    cdef floating buf[16 * _FB]
    cdef Py_ssize_t c0 = 0, c, n, xi
    while c0 < C:
        n = C - c0 if C - c0 < _FB else _FB
        for xi in range(16):
            memcpy(buf + xi * _FB, dU + xi * plane + c0, n * sizeof(floating))
        for c in range(n):
            _untransform_filter(buf + c, _FB, dw + 9 * (c0 + c))
        c0 += n


def untransform_weight_grad(const floating[:, :, ::1] dU,   # IN  (16, C_out, C_in)
                            floating[:, :, :, ::1] dw,       # OUT (C_out, C_in, 3, 3)
                            int n_threads):
    """``dw[o, c] = G^T dU[:, o, c] G``: the adjoint of :func:`transform_weights`."""
    cdef Py_ssize_t O = dw.shape[0], C = dw.shape[1], o
    for o in prange(O, nogil=True, schedule='static', num_threads=n_threads):
        _untransform_row(&dU[0, o, 0], O * C, C, &dw[o, 0, 0, 0])

"""2-D convolution (cross-correlation) kernels: im2col + GEMM over tiles of output rows.

Layout: x (N, C, H, W), w (C_out, C_in/groups, kh, kw), y (N, C_out, Ho, Wo), all
C-contiguous. Each sample's output rows are cut into tiles of ``R`` rows (the last one may
be shorter); the caller picks ``R`` from the shapes and the workspace limit only (see
functional.planner.conv_tile_rows), never from the thread count. A tile's column matrix is
``Kg x L`` with ``Kg = C_in/groups*kh*kw`` and ``L = rows*Wo``, so the scratch of a thread
(one row of ``work``) is at most ``Kg*R*Wo`` elements, whatever the image size.

Tasks are (sample, tile, channel block) triples (forward, input gradient) or (range of
(sample, tile) pairs, block of input channels) (weight gradient), the counts of tiles and
blocks chosen from the shapes (planner.conv_tiles, planner.dw_split), spread over OpenMP
threads that each call
single-threaded BLAS (the caller limits BLAS to one thread around the call with
threadpoolctl). So a single image keeps every thread busy, and every output element is
computed by one task in an order fixed by the shapes: results are bit-identical for any
``n_threads``.

- Forward: ``y[:, rows] = W_g (og x Kg) @ col (Kg x L)`` (+ bias), tiles independent; a
  small batch of small images also splits the input channels (rows of col) into blocks
  whose products are added to y in order afterwards.
- Input gradient: ``col = W_g^T @ dy[:, rows]``, then col2im adds it into dx. Tiles whose
  input rows overlap must not run at once: tile t and tile t + m never overlap for the
  ``m`` of _dx_phases, so phase q runs the tiles ``t % m == q`` in parallel, phases in
  order; every dx element thus receives its tiles' contributions in one fixed order. Blocks
  of input channels (rows of col, channels of dx) are independent tasks too.
- Weight gradient: the flattened sequence of (sample, tile) pairs is cut into
  ``n_parts = dw_part.shape[0]`` fixed ranges; a task sums its range in order into
  ``dw_part[part]`` for one block of input channels (columns of dw); reduce.sum_chunks
  then adds the parts in order.

im2col row ``r = (c*kh + i)*kw + j``, column ``p = (oh - r0)*Wo + ow`` holds
``x[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]`` (zero outside the image).
A 1x1, stride-1, unpadded convolution needs no im2col: x itself is the column matrix.
For the weight gradient the caller may ask for the transposed matrix, (L x Kg), built
directly by _im2col_t (BLAS is faster untransposed there for small products; see
planner.transposed_dw_cols). The rows these copies move are short, so the C helpers
(cnn_gather_rows, cnn_scatter_add_rows) take a whole block of rows per call.
"""
from libc.string cimport memcpy, memset
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

from cnncore._kernels._blas cimport (_gemm, NoTrans, Trans, _pgemm, _PACKED_MIN_COLS,
                                      CNN_PGEMM_OB)
from cnncore._kernels._blas import packed_rows
from cnncore._kernels._geometry cimport _valid_range
from cnncore._kernels._simd cimport _gather_rows, _zero_rows, _scatter_add_rows


cdef struct Geometry:
    Py_ssize_t N, C, H, W, C_out, Cg, kh, kw, Ho, Wo, groups, og, Kg, P
    Py_ssize_t sh, sw, ph, pw, dh, dw
    Py_ssize_t R, T  # output rows per tile, tiles per sample
    Py_ssize_t CB  # blocks of a group's input channels (input gradient)
    bint pointwise
    bint dw_t  # weight gradient from the transposed column matrix (see _weight_grad_task)


cdef Geometry _geometry(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t C_out, Py_ssize_t Cg, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t Ho, Py_ssize_t Wo, int sh, int sw, int ph, int pw,
                        int dh, int dw, int groups, Py_ssize_t rows) except *:
    cdef Geometry g
    if rows < 1:
        raise ValueError(f"conv kernels: rows per tile must be >= 1, got {rows}")
    g.N, g.C, g.H, g.W = N, C, H, W
    g.C_out, g.Cg, g.kh, g.kw, g.Ho, g.Wo = C_out, Cg, kh, kw, Ho, Wo
    g.sh, g.sw, g.ph, g.pw, g.dh, g.dw = sh, sw, ph, pw, dh, dw
    g.groups = groups
    g.og = C_out // groups
    g.Kg = Cg * kh * kw
    g.P = Ho * Wo
    g.R = rows if rows < Ho else Ho
    g.T = (Ho + g.R - 1) // g.R
    g.pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    g.dw_t = False
    g.CB = 1
    return g


cdef inline Py_ssize_t _tile_start(const Geometry* g, Py_ssize_t t) noexcept nogil:
    """First output row of tile t."""
    return t * g.R


cdef inline Py_ssize_t _tile_stop(const Geometry* g, Py_ssize_t t) noexcept nogil:
    """One past the last output row of tile t."""
    return t * g.R + g.R if t * g.R + g.R < g.Ho else g.Ho


# Inside a prange body, r0 / r1 must be assigned (r0 = _tile_start(...)), never set through
# a pointer: Cython makes a variable thread-private only where the loop body assigns it, and
# a variable written through &r0 stays shared between the threads (a race: tiles computed
# with another thread's rows).


cdef inline Py_ssize_t _tap_rows(const Geometry* g, Py_ssize_t i, Py_ssize_t r0,
                                 Py_ssize_t r1, Py_ssize_t* oh_lo,
                                 Py_ssize_t* oh_hi) noexcept nogil:
    """The output rows of tile [r0, r1) whose kernel row ``i`` reads inside the image,
    [oh_lo, oh_hi) (empty when oh_hi <= oh_lo); returns that row's offset i*dh - ph."""
    cdef Py_ssize_t off_h = i * g.dh - g.ph
    _valid_range(off_h, g.sh, g.H, g.Ho, oh_lo, oh_hi)
    if oh_lo[0] < r0:
        oh_lo[0] = r0
    if oh_hi[0] > r1:
        oh_hi[0] = r1
    return off_h


cdef void _im2col(const Geometry* g, const floating* x,                         # IN
                  Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t r0, Py_ssize_t r1,
                  floating* col, Py_ssize_t ld=0) noexcept nogil:              # OUT
    """Rows of channels [c0, c1) of x (one group's channels) and columns of output rows
    [r0, r1): ``(c1 - c0)*kh*kw x (r1 - r0)*Wo``, rows ``ld`` apart (0: ``(r1 - r0)*Wo``,
    contiguous). One block per (c, i, j): the rectangle
    of outputs that read inside the image, rows [oh_lo, oh_hi) x columns [lo, hi), is
    copied row by row; the rows above and below it and the margins left and right of it
    (padding) are zeroed."""
    cdef Py_ssize_t c, i, j, off_h, off_w, oh_lo, oh_hi, lo, hi
    cdef Py_ssize_t Wo = g.Wo, L = (r1 - r0) * g.Wo
    cdef floating* dst
    if ld == 0:
        ld = L
    for c in range(c0, c1):
        for i in range(g.kh):
            off_h = _tap_rows(g, i, r0, r1, &oh_lo, &oh_hi)
            for j in range(g.kw):
                off_w = j * g.dw - g.pw
                _valid_range(off_w, g.sw, g.W, Wo, &lo, &hi)
                dst = col + (((c - c0) * g.kh + i) * g.kw + j) * ld
                if oh_hi <= oh_lo or hi <= lo:
                    memset(dst, 0, L * sizeof(floating))
                    continue
                if oh_lo > r0:
                    memset(dst, 0, (oh_lo - r0) * Wo * sizeof(floating))
                if oh_hi < r1:
                    memset(dst + (oh_hi - r0) * Wo, 0, (r1 - oh_hi) * Wo * sizeof(floating))
                dst = dst + (oh_lo - r0) * Wo
                if lo > 0:
                    _zero_rows(dst, Wo, lo, oh_hi - oh_lo)
                if hi < Wo:
                    _zero_rows(dst + hi, Wo, Wo - hi, oh_hi - oh_lo)
                _gather_rows(dst + lo, Wo,
                             x + (c * g.H + oh_lo * g.sh + off_h) * g.W + lo * g.sw + off_w,
                             g.sh * g.W, hi - lo, g.sw, oh_hi - oh_lo)


cdef void _im2col_t(const Geometry* g, const floating* x,                       # IN
                    Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t r0, Py_ssize_t r1,
                    floating* colt) noexcept nogil:                             # OUT
    """The transpose of _im2col's matrix, ``(r1 - r0)*Wo x kb`` with
    ``kb = (c1 - c0)*kh*kw``: ``colt[p, r] = col[r, p]``.

    Per (oh, c, i), each output column ow reads a run of kw pixels of one image row; the
    columns whose whole run is inside the image, ow in [ow_a, ow_b), are copied as Wo rows
    of kw elements, and only the few at the borders need their own bounds.
    """
    cdef Py_ssize_t kb = (c1 - c0) * g.kh * g.kw
    cdef Py_ssize_t oh, ow, c, i, ih, ow_a, ow_b
    cdef const floating* src
    cdef floating* dst
    if g.ph > 0 or g.pw > 0:
        memset(colt, 0, (r1 - r0) * g.Wo * kb * sizeof(floating))
    _valid_range(-g.pw, g.sw, g.W - (g.kw - 1) * g.dw, g.Wo, &ow_a, &ow_b)
    for oh in range(r0, r1):
        for c in range(c0, c1):
            for i in range(g.kh):
                ih = oh * g.sh - g.ph + i * g.dh
                if ih < 0 or ih >= g.H:
                    continue
                src = x + (c * g.H + ih) * g.W
                dst = colt + (oh - r0) * g.Wo * kb + ((c - c0) * g.kh + i) * g.kw
                if ow_b > ow_a:
                    _gather_rows(dst + ow_a * kb, kb, src + (ow_a * g.sw - g.pw), g.sw,
                                 g.kw, g.dw, ow_b - ow_a)
                for ow in range(ow_a):
                    _im2col_t_edge(src, g.W, g.kw, g.sw, g.dw, g.pw, ow, dst + ow * kb)
                for ow in range(ow_b, g.Wo):
                    _im2col_t_edge(src, g.W, g.kw, g.sw, g.dw, g.pw, ow, dst + ow * kb)


cdef inline void _im2col_t_edge(const floating* src, Py_ssize_t W, Py_ssize_t kw,  # IN
                                Py_ssize_t sw, Py_ssize_t dw, Py_ssize_t pw, Py_ssize_t ow,
                                floating* dst) noexcept nogil:                       # OUT
    """The kw taps of output column ow that fall inside the image row ``src`` (the others
    stay 0)."""
    cdef Py_ssize_t j_lo, j_hi
    _valid_range(ow * sw - pw, dw, W, kw, &j_lo, &j_hi)
    if j_hi > j_lo:
        _gather_rows(dst + j_lo, 0, src + (ow * sw - pw + j_lo * dw), 0, j_hi - j_lo, dw, 1)


cdef void _col2im_add(const Geometry* g, const floating* col,                   # IN
                      Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t r0, Py_ssize_t r1,
                      floating* dx, Py_ssize_t ld=0) noexcept nogil:            # IN/OUT
    """Adjoint of _im2col for channels [c0, c1) of a group and output rows [r0, r1) (rows
    of ``col`` ``ld`` apart; 0: contiguous): every column entry is added to the pixel of
    ``dx`` (the group's channel 0) it was read from (per (c, i, j) block, its rectangle of
    outputs that read inside the image)."""
    cdef Py_ssize_t c, i, j, off_h, off_w, oh_lo, oh_hi, lo, hi
    cdef Py_ssize_t L = (r1 - r0) * g.Wo if ld == 0 else ld
    for c in range(c0, c1):
        for i in range(g.kh):
            off_h = _tap_rows(g, i, r0, r1, &oh_lo, &oh_hi)
            if oh_hi <= oh_lo:
                continue
            for j in range(g.kw):
                off_w = j * g.dw - g.pw
                _valid_range(off_w, g.sw, g.W, g.Wo, &lo, &hi)
                if hi <= lo:
                    continue
                _scatter_add_rows(
                    dx + (c * g.H + oh_lo * g.sh + off_h) * g.W + lo * g.sw + off_w,
                    g.sh * g.W,
                    col + (((c - c0) * g.kh + i) * g.kw + j) * L + (oh_lo - r0) * g.Wo + lo,
                    g.Wo,
                    hi - lo, g.sw, oh_hi - oh_lo)


cdef inline Py_ssize_t _dx_phases(const Geometry* g) noexcept nogil:
    """Smallest m such that tiles t and t + m never write the same dx row: tile t reads
    input rows [t*R*sh - ph, ((t + 1)*R - 1)*sh - ph + (kh - 1)*dh]. A 1x1 stride-1 kernel
    (or a stride longer than the kernel's span) gives m = 1."""
    return ((g.R - 1) * g.sh + (g.kh - 1) * g.dh) // (g.R * g.sh) + 1


cdef void _forward_tile(const Geometry* g, const floating* x, const floating* w,  # IN
                        const floating* wp,                                       # IN
                        const floating* bias, bint has_bias,                      # IN
                        Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t r0, Py_ssize_t r1,
                        floating* y, Py_ssize_t ldy, floating* col,               # OUT
                        Py_ssize_t o0=0, Py_ssize_t o1=-1) noexcept nogil:
    """The part of output rows [r0, r1) of one sample that input channels [c0, c1) of
    every group give: ``y_g (og x L, rows ldy apart) = w_g[:, k0:k1] (og x kb) @ col
    (kb x L)``, plus the bias if ``has_bias``. With ``wp`` (the packed w of an ungrouped
    convolution, or NULL) and at least _PACKED_MIN_COLS columns, by the packed GEMM, for
    output channels [o0, o1) only (o1 = -1: all; else an ungrouped convolution, o0 a
    multiple of CNN_PGEMM_OB)."""
    cdef Py_ssize_t grp, o, p
    cdef Py_ssize_t L = (r1 - r0) * g.Wo, k0 = c0 * g.kh * g.kw
    cdef Py_ssize_t kb = (c1 - c0) * g.kh * g.kw
    cdef int ldb
    cdef const floating* colp
    cdef floating* yp
    cdef floating beta = 0
    if o1 < 0:
        o1 = g.og
    for grp in range(g.groups):
        yp = y + grp * g.og * ldy
        if g.pointwise:
            colp = x + (grp * g.Cg + c0) * g.P + r0 * g.Wo
            ldb = <int> g.P
        else:
            _im2col(g, x + grp * g.Cg * g.H * g.W, c0, c1, r0, r1, col)
            colp = col
            ldb = <int> L
        if wp != NULL and L >= _PACKED_MIN_COLS:
            _pgemm(o1 - o0, L, kb, wp + (o0 * g.Kg + k0 * CNN_PGEMM_OB), g.Kg, colp, ldb,
                   bias + o0 if has_bias else NULL, yp + o0 * ldy, ldy)
            continue
        if has_bias:  # start from the bias and let GEMM add to it (beta = 1)
            for o in range(o0, o1):
                for p in range(L):
                    yp[o * ldy + p] = bias[grp * g.og + o]
            beta = 1
        _gemm(NoTrans, NoTrans, <int> (o1 - o0), <int> L, <int> kb, <floating> 1,
              w + (grp * g.og + o0) * g.Kg + k0, <int> g.Kg, colp, ldb, beta, yp + o0 * ldy,
              <int> ldy)


cdef void _add_parts(const floating* parts, Py_ssize_t n_parts, Py_ssize_t stride,  # IN
                     Py_ssize_t n, floating* y) noexcept nogil:                    # IN/OUT
    """``y[i] += parts[0, i] + parts[1, i] + ...`` (``stride`` apart), in order."""
    cdef Py_ssize_t i, k
    cdef floating s
    for i in range(n):
        s = y[i]
        for k in range(n_parts):
            s = s + parts[k * stride + i]
        y[i] = s


def conv2d_forward(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
                   const floating[:, :, :, ::1] w,     # IN  (C_out, C/groups, kh, kw)
                   const floating[::1] bias,           # IN  (C_out,) or (0,) for none
                   floating[:, :, :, ::1] y,           # OUT (N, C_out, Ho, Wo)
                   floating[:, ::1] work,              # scratch (n_threads, >= Kg*rows*Wo)
                   floating[:, :, :, ::1] parts,       # scratch (k_parts - 1, N, C_out, P)
                   int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                   Py_ssize_t rows, int n_threads,
                   const floating[::1] wp=None,        # IN  _blas.pack(w) or None
                   Py_ssize_t m_blocks=1):
    """Forward convolution into ``y``; the (sample, tile of ``rows`` output rows, block of
    input channels) tasks are split over ``n_threads`` threads. With ``wp``, the packed
    copy of ``w`` (ungrouped convolutions only), tiles of at least _blas.PACKED_MIN_COLS
    output pixels use the packed GEMM; a 1x1 stride-1 convolution (no column matrix to
    build twice) may then split its output channels into ``m_blocks`` blocks of whole
    packed row blocks instead of splitting the input channels (no partial outputs).

    With ``k_parts = parts.shape[0] + 1 > 1`` blocks of input channels (a small batch of
    small images), block 0 writes ``y`` and block ``b`` its part ``parts[b - 1]``; the parts
    are then added to ``y`` in order."""
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                                w.shape[0], w.shape[1], w.shape[2], w.shape[3],
                                y.shape[2], y.shape[3], sh, sw, ph, pw, dh, dw, groups, rows)
    cdef Py_ssize_t KP = parts.shape[0] + 1
    if not 1 <= KP <= g.Cg:
        raise ValueError(f"conv2d_forward: {KP} blocks of {g.Cg} input channels")
    cdef Py_ssize_t n_ob = (g.C_out + CNN_PGEMM_OB - 1) // CNN_PGEMM_OB, MB = m_blocks
    if MB != 1 and (wp is None or KP != 1 or not g.pointwise or not 1 <= MB <= n_ob):
        raise ValueError(f"conv2d_forward: {MB} blocks of output channels need packed "
                         f"weights, a 1x1 convolution, one block of input channels and at "
                         f"most {n_ob} blocks")
    cdef bint has_bias = bias.shape[0] > 0
    cdef Py_ssize_t task, n, b, r0 = 0, r1 = 0, tid = 0
    cdef floating* col = NULL
    cdef const floating* wpp = NULL
    if wp is not None:
        if groups != 1 or wp.shape[0] != packed_rows(g.C_out) * g.Kg:
            raise ValueError(f"conv2d_forward: wp must be the packed weights of an "
                             f"ungrouped convolution ({packed_rows(g.C_out) * g.Kg} "
                             f"elements), got {wp.shape[0]} elements, groups={groups}")
        wpp = &wp[0]
    if MB > 1:
        with nogil:
            for task in prange(g.N * g.T * MB, schedule='static', num_threads=n_threads):
                n = task // (g.T * MB)
                b = task % MB
                r0 = _tile_start(&g, (task // MB) % g.T)
                r1 = _tile_stop(&g, (task // MB) % g.T)
                _forward_tile(&g, &x[n, 0, 0, 0], &w[0, 0, 0, 0], wpp, &bias[0], has_bias,
                              0, g.Cg, r0, r1, &y[n, 0, r0, 0], g.P, NULL,
                              b * n_ob // MB * CNN_PGEMM_OB,
                              min((b + 1) * n_ob // MB * CNN_PGEMM_OB, g.C_out))
        return
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        col = &work[tid, 0]
        for task in prange(g.N * g.T * KP, schedule='static'):
            n = task // (g.T * KP)
            b = task % KP
            r0 = _tile_start(&g, (task // KP) % g.T)
            r1 = _tile_stop(&g, (task // KP) % g.T)
            if b == 0:
                _forward_tile(&g, &x[n, 0, 0, 0], &w[0, 0, 0, 0], wpp, &bias[0], has_bias,
                              0, g.Cg // KP, r0, r1, &y[n, 0, r0, 0], g.P, col)
            else:
                _forward_tile(&g, &x[n, 0, 0, 0], &w[0, 0, 0, 0], wpp, &bias[0], False,
                              b * g.Cg // KP, (b + 1) * g.Cg // KP, r0, r1,
                              &parts[b - 1, n, 0, r0 * g.Wo], g.P, col)
    if KP > 1:
        for task in prange(g.N * g.C_out, nogil=True, schedule='static',
                           num_threads=n_threads):
            _add_parts(&parts[0, task // g.C_out, task % g.C_out, 0], KP - 1,
                       g.N * g.C_out * g.P, g.P, &y[task // g.C_out, task % g.C_out, 0, 0])


cdef Geometry _grouped_geometry(str where, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H,
                                Py_ssize_t W, Py_ssize_t C_out, Py_ssize_t Ho,
                                Py_ssize_t Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                int dh, int dw, Py_ssize_t sg, Py_ssize_t packed,
                                Py_ssize_t expected, Py_ssize_t work_row) except *:
    """Geometry of an ungrouped convolution done over groups of ``sg`` whole samples, after
    checking the packed operand (``packed`` of ``expected`` elements) and a work row."""
    cdef Geometry g = _geometry(N, C, H, W, C_out, C, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw,
                                1, Ho)
    if sg < 1 or packed != expected:
        raise ValueError(f"{where}: sg={sg}, packed operand of {packed} elements (expected "
                         f"{expected})")
    if work_row < (g.Kg + g.C_out) * sg * g.P:
        raise ValueError(f"{where}: work rows of {work_row} elements, need "
                         f"{(g.Kg + g.C_out) * sg * g.P}")
    return g


def conv2d_forward_grouped(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                           const floating[::1] wp,           # IN  _blas.pack(w): (C_out, K)
                           const floating[::1] bias,         # IN  (C_out,) or (0,) for none
                           floating[:, :, :, ::1] y,         # OUT (N, C_out, Ho, Wo)
                           floating[:, ::1] work,            # scratch (n_threads, >= (K + C_out)*sg*P)
                           int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                           Py_ssize_t sg, int n_threads):
    """Forward convolution of an ungrouped convolution on small output maps (P = Ho*Wo
    pixels, fewer than a good GEMM wants) by the packed GEMM over groups of ``sg`` samples:
    per task, the column matrices of its samples side by side (``K x sg*P``), one product
    ``W @ col (+ bias)`` into scratch, then each sample's ``C_out x P`` block copied to y.
    The groups depend on ``sg`` only (the caller's choice from shapes), so results do not
    depend on the thread count."""
    cdef Py_ssize_t K = x.shape[1] * kh * kw
    cdef Geometry g = _grouped_geometry(
        "conv2d_forward_grouped", x.shape[0], x.shape[1], x.shape[2], x.shape[3], y.shape[1],
        y.shape[2], y.shape[3], kh, kw, sh, sw, ph, pw, dh, dw, sg, wp.shape[0],
        packed_rows(y.shape[1]) * K, work.shape[1])
    cdef Py_ssize_t n_groups = (g.N + sg - 1) // sg, L = sg * g.P
    cdef Py_ssize_t task, s, o, n0, ns, tid
    cdef floating* col
    cdef floating* out
    cdef const floating* b = &bias[0] if bias.shape[0] else NULL
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        col = &work[tid, 0]
        out = col + g.Kg * L
        for task in prange(n_groups, schedule='static'):
            n0 = task * sg
            ns = g.N - n0 if g.N - n0 < sg else sg
            for s in range(ns):
                _im2col(&g, &x[n0 + s, 0, 0, 0], 0, g.C, 0, g.Ho, col + s * g.P, ns * g.P)
            _pgemm(g.C_out, ns * g.P, g.Kg, &wp[0], g.Kg, col, ns * g.P, b, out, ns * g.P)
            for s in range(ns):
                for o in range(g.C_out):
                    memcpy(&y[n0 + s, o, 0, 0], out + o * ns * g.P + s * g.P,
                           g.P * sizeof(floating))


def conv2d_input_grad_grouped(const floating[:, :, :, ::1] dy,  # IN  (N, C_out, Ho, Wo)
                              const floating[::1] wpt,           # IN  _blas.pack(w.T): (K, C_out)
                              floating[:, :, :, ::1] dx,         # OUT (N, C, H, W)
                              floating[:, ::1] work,  # scratch (n_threads, >= (C_out + K)*sg*P)
                              int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                              Py_ssize_t sg, int n_threads):
    """Input gradient of an ungrouped convolution on small output maps (P = Ho*Wo pixels)
    by the packed GEMM over groups of ``sg`` samples, as conv2d_forward_grouped: per task,
    the output gradients of its samples side by side (``C_out x sg*P``), one product
    ``col = W^T @ dy`` (``K x sg*P``), then each sample's columns added back by col2im into
    its own zeroed dx. A sample is one task's: results do not depend on the thread count."""
    cdef Py_ssize_t K = dx.shape[1] * kh * kw
    if dy.shape[0] != dx.shape[0]:
        raise ValueError(f"conv2d_input_grad_grouped: {dy.shape[0]} and {dx.shape[0]} samples")
    cdef Geometry g = _grouped_geometry(
        "conv2d_input_grad_grouped", dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3],
        dy.shape[1], dy.shape[2], dy.shape[3], kh, kw, sh, sw, ph, pw, dh, dw, sg,
        wpt.shape[0], packed_rows(K) * dy.shape[1], work.shape[1])
    cdef Py_ssize_t n_groups = (g.N + sg - 1) // sg, L = sg * g.P
    cdef Py_ssize_t task, s, o, n0, ns, tid
    cdef floating* dyg
    cdef floating* col
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        dyg = &work[tid, 0]
        col = dyg + g.C_out * L
        for task in prange(n_groups, schedule='static'):
            n0 = task * sg
            ns = g.N - n0 if g.N - n0 < sg else sg
            for s in range(ns):
                for o in range(g.C_out):
                    memcpy(dyg + o * ns * g.P + s * g.P, &dy[n0 + s, o, 0, 0],
                           g.P * sizeof(floating))
            _pgemm(g.Kg, ns * g.P, g.C_out, &wpt[0], g.C_out, dyg, ns * g.P, NULL, col,
                   ns * g.P)
            for s in range(ns):
                memset(&dx[n0 + s, 0, 0, 0], 0, g.C * g.H * g.W * sizeof(floating))
                _col2im_add(&g, col + s * g.P, 0, g.C, 0, g.Ho, &dx[n0 + s, 0, 0, 0],
                            ns * g.P)


cdef void _input_grad_tile(const Geometry* g, const floating* dy, const floating* w,  # IN
                           const floating* wpt,                                       # IN
                           Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t r0, Py_ssize_t r1,
                           floating* dx, floating* col) noexcept nogil:               # OUT
    """Channels [c0, c1) of every group of one sample's dx get the contribution of output
    rows [r0, r1): ``col (kb x L) = w_g[:, k0:k1]^T @ dy_g[:, rows]`` (``k0 = c0*kh*kw``),
    added into dx by col2im (a 1x1 stride-1 kernel: written straight into dx, whose pixels
    are then the tile's own). With ``wpt`` (the packed w^T of an ungrouped convolution, or
    NULL), at least _PACKED_MIN_COLS columns and k0 on a packed block, by the packed GEMM."""
    cdef Py_ssize_t grp
    cdef Py_ssize_t L = (r1 - r0) * g.Wo, k0 = c0 * g.kh * g.kw
    cdef Py_ssize_t kb = (c1 - c0) * g.kh * g.kw
    cdef const floating* dys
    if wpt != NULL and L >= _PACKED_MIN_COLS and k0 % CNN_PGEMM_OB == 0:
        dys = dy + r0 * g.Wo
        if g.pointwise:
            _pgemm(kb, L, g.C_out, wpt + k0 * g.C_out, g.C_out, dys, g.P, NULL,
                   dx + c0 * g.P + r0 * g.Wo, g.P)
        else:
            _pgemm(kb, L, g.C_out, wpt + k0 * g.C_out, g.C_out, dys, g.P, NULL, col, L)
            _col2im_add(g, col, c0, c1, r0, r1, dx)
        return
    for grp in range(g.groups):
        dys = dy + grp * g.og * g.P + r0 * g.Wo
        if g.pointwise:
            _gemm(Trans, NoTrans, <int> kb, <int> L, <int> g.og, <floating> 1,
                  w + grp * g.og * g.Kg + k0, <int> g.Kg, dys, <int> g.P, <floating> 0,
                  dx + (grp * g.Cg + c0) * g.P + r0 * g.Wo, <int> g.P)
        else:
            _gemm(Trans, NoTrans, <int> kb, <int> L, <int> g.og, <floating> 1,
                  w + grp * g.og * g.Kg + k0, <int> g.Kg, dys, <int> g.P, <floating> 0,
                  col, <int> L)
            _col2im_add(g, col, c0, c1, r0, r1, dx + grp * g.Cg * g.H * g.W)


cdef void _weight_grad_task(const Geometry* g, Py_ssize_t f0, Py_ssize_t f1,
                            Py_ssize_t c0, Py_ssize_t c1,
                            const floating* dy, const floating* x,                 # IN
                            floating* dw, floating* col) noexcept nogil:           # OUT
    """Columns [c0*kh*kw, c1*kh*kw) of every group's weight gradient (input channels
    [c0, c1) of the group), summed in order over the (sample, tile) pairs f0 <= f < f1
    (``f = n*T + t``) into ``dw`` (C_out x Kg): ``dw_g[:, k] += dy_g[:, rows] (og x L) @
    col^T (L x kb)``.

    With ``g.dw_t`` the column block is built transposed, (L x kb) by _im2col_t, so that
    BLAS gets it untransposed (see planner.transposed_dw_cols)."""
    cdef Py_ssize_t f, n, grp, r0 = 0, r1 = 0, L
    cdef Py_ssize_t kb = (c1 - c0) * g.kh * g.kw
    cdef int ldb
    cdef const floating* xs
    cdef const floating* dys
    cdef const floating* colp
    cdef floating* dwp
    cdef floating beta
    for f in range(f0, f1):
        n = f // g.T
        r0 = _tile_start(g, f % g.T)
        r1 = _tile_stop(g, f % g.T)
        L = (r1 - r0) * g.Wo
        beta = 0 if f == f0 else 1
        for grp in range(g.groups):
            xs = x + (n * g.C + grp * g.Cg) * g.H * g.W
            dys = dy + (n * g.C_out + grp * g.og) * g.P + r0 * g.Wo
            dwp = dw + grp * g.og * g.Kg + c0 * g.kh * g.kw
            if g.dw_t:
                _im2col_t(g, xs, c0, c1, r0, r1, col)
                _gemm(NoTrans, NoTrans, <int> g.og, <int> kb, <int> L, <floating> 1,
                      dys, <int> g.P, col, <int> kb, beta, dwp, <int> g.Kg)
                continue
            if g.pointwise:
                colp = xs + c0 * g.P + r0 * g.Wo
                ldb = <int> g.P
            else:
                _im2col(g, xs, c0, c1, r0, r1, col)
                colp = col
                ldb = <int> L
            _gemm(NoTrans, Trans, <int> g.og, <int> kb, <int> L, <floating> 1,
                  dys, <int> g.P, colp, ldb, beta, dwp, <int> g.Kg)


def conv2d_backward(const floating[:, :, :, ::1] dy,    # IN  (N, C_out, Ho, Wo)
                    const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
                    const floating[:, :, :, ::1] w,     # IN  (C_out, C/groups, kh, kw)
                    floating[:, :, :, ::1] dx,          # OUT (N, C, H, W)
                    floating[:, :, ::1] dw_part,        # OUT (n_parts, C_out, Kg)
                    floating[:, ::1] work,              # scratch (n_threads, >= Kg*rows*Wo)
                    int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                    Py_ssize_t rows, Py_ssize_t n_kblocks, Py_ssize_t dx_blocks,
                    bint need_dx, bint dw_t, int n_threads,
                    const floating[::1] wpt=None):     # IN  _blas.pack(w.T) or None
    """Input gradient into ``dx`` and per-part weight gradients into ``dw_part``; with
    ``wpt`` (ungrouped convolutions), the input gradient's products of at least
    _blas.PACKED_MIN_COLS columns on the packed GEMM.

    ``dw_t`` builds the weight gradient's column blocks transposed, (L x Kg) instead of
    (Kg x L). Both give the same gradient up to rounding; which is faster depends on the
    shapes (the caller chooses, from the shapes only).

    The weight gradient is cut into ``n_parts = dw_part.shape[0]`` ranges of the (sample,
    tile) pairs times ``n_kblocks`` blocks of input channels, both chosen by the caller from
    the shapes only: part p covers pairs [p*N*T//n_parts, (p+1)*N*T//n_parts), block b the
    channels [b*Cg//n_kblocks, (b+1)*Cg//n_kblocks) of every group.
    reduce.sum_chunks then adds the parts in order, so the result does not depend on how
    the tasks were spread over threads. The input gradient's tasks are (sample, tile, block
    of ``dx_blocks`` of a group's input channels), tiles in the phases of _dx_phases.
    """
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                                w.shape[0], w.shape[1], w.shape[2], w.shape[3],
                                dy.shape[2], dy.shape[3], sh, sw, ph, pw, dh, dw, groups, rows)
    g.dw_t = dw_t
    cdef Py_ssize_t n_parts = dw_part.shape[0], NT = g.N * g.T
    if not 1 <= n_parts <= NT or not 1 <= n_kblocks <= g.Cg or not 1 <= dx_blocks <= g.Cg:
        raise ValueError(f"conv2d_backward: {n_parts} parts of {NT} tiles, {n_kblocks} and "
                         f"{dx_blocks} channel blocks of {g.Cg} channels")
    g.CB = dx_blocks
    cdef Py_ssize_t task, part, b, n, q, m, per, tid = 0, r0 = 0, r1 = 0
    cdef floating* col = NULL
    cdef const floating* wptp = NULL
    if wpt is not None:
        if groups != 1 or wpt.shape[0] != packed_rows(g.Kg) * g.C_out:
            raise ValueError(f"conv2d_backward: wpt must be the packed w.T of an ungrouped "
                             f"convolution ({packed_rows(g.Kg) * g.C_out} elements), got "
                             f"{wpt.shape[0]} elements, groups={groups}")
        wptp = &wpt[0]
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        col = &work[tid, 0]
        for task in prange(n_parts * n_kblocks, schedule='static'):
            part = task // n_kblocks
            b = task % n_kblocks
            _weight_grad_task(&g, part * NT // n_parts, (part + 1) * NT // n_parts,
                              b * g.Cg // n_kblocks, (b + 1) * g.Cg // n_kblocks,
                              &dy[0, 0, 0, 0], &x[0, 0, 0, 0], &dw_part[part, 0, 0], col)
    if not need_dx:
        return
    m = 1 if g.pointwise else _dx_phases(&g)
    if not g.pointwise:  # col2im adds into dx
        for task in prange(g.N * g.C, nogil=True, schedule='static', num_threads=n_threads):
            memset(&dx[task // g.C, task % g.C, 0, 0], 0, g.H * g.W * sizeof(floating))
    for q in range(m):  # phase q: tiles q, q + m, q + 2m, ... of every sample
        per = (g.T - q + m - 1) // m
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            col = &work[tid, 0]
            for task in prange(g.N * per * g.CB, schedule='static'):
                n = task // (per * g.CB)
                b = task % g.CB
                r0 = _tile_start(&g, q + ((task // g.CB) % per) * m)
                r1 = _tile_stop(&g, q + ((task // g.CB) % per) * m)
                _input_grad_tile(&g, &dy[n, 0, 0, 0], &w[0, 0, 0, 0], wptp, b * g.Cg // g.CB,
                                 (b + 1) * g.Cg // g.CB, r0, r1, &dx[n, 0, 0, 0], col)

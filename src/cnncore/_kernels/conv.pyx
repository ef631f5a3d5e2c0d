"""2-D convolution (cross-correlation) kernels: im2col + one GEMM per sample and group.

Layout: x (N, C, H, W), w (C_out, C_in/groups, kh, kw), y (N, C_out, Ho, Wo), all
C-contiguous. The batch is split over OpenMP threads; each thread owns one row of the
``work`` array as its im2col buffer and calls single-threaded BLAS (the caller limits BLAS
to one thread around the call with threadpoolctl). Every reduction over the batch runs in
an order that does not depend on the thread count, so results are bit-identical for any
``n_threads``.

im2col row ``r = (c*kh + i)*kw + j``, column ``p = oh*Wo + ow`` holds
``x[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]`` (zero outside the image).
A 1x1, stride-1, unpadded convolution needs no im2col: x itself is the column matrix.
For the weight gradient the caller may ask for the transposed matrix, (P x Kg), built
directly by _im2col_t (BLAS is faster untransposed there for small products; see
functional._transposed_dw_cols). The rows these copies move are short, so the C helpers
(cnn_gather_rows, cnn_scatter_add_rows) take a whole block of rows per call.
"""
from libc.string cimport memset
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

from cnncore._kernels._blas cimport _gemm, NoTrans, Trans
from cnncore._kernels._geometry cimport _valid_range
from cnncore._kernels._simd cimport _gather_rows, _zero_rows, _scatter_add_rows, _sum_lanes, CNN_LANES


cdef void _im2col(const floating* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,  # IN
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                  Py_ssize_t Ho, Py_ssize_t Wo,
                  floating* col) noexcept nogil:                                # OUT
    """One (Ho x Wo) block per (c, i, j): the rectangle of outputs that read inside the
    image, rows [oh_lo, oh_hi) x columns [lo, hi), is copied row by row; the rows above and
    below it and the margins left and right of it (padding) are zeroed."""
    cdef Py_ssize_t c, i, j, off_h, off_w, oh_lo, oh_hi, lo, hi
    cdef floating* dst
    for c in range(C):
        for i in range(kh):
            off_h = i * dh - ph
            _valid_range(off_h, sh, H, Ho, &oh_lo, &oh_hi)
            for j in range(kw):
                off_w = j * dw - pw
                _valid_range(off_w, sw, W, Wo, &lo, &hi)
                dst = col + ((c * kh + i) * kw + j) * Ho * Wo
                if oh_hi <= oh_lo or hi <= lo:
                    memset(dst, 0, Ho * Wo * sizeof(floating))
                    continue
                if oh_lo > 0:
                    memset(dst, 0, oh_lo * Wo * sizeof(floating))
                if oh_hi < Ho:
                    memset(dst + oh_hi * Wo, 0, (Ho - oh_hi) * Wo * sizeof(floating))
                dst = dst + oh_lo * Wo
                if lo > 0:
                    _zero_rows(dst, Wo, lo, oh_hi - oh_lo)
                if hi < Wo:
                    _zero_rows(dst + hi, Wo, Wo - hi, oh_hi - oh_lo)
                _gather_rows(dst + lo, Wo,
                             x + (c * H + oh_lo * sh + off_h) * W + lo * sw + off_w,
                             sh * W, hi - lo, sw, oh_hi - oh_lo)


cdef void _im2col_t(const floating* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,  # IN
                    Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                    Py_ssize_t Ho, Py_ssize_t Wo,
                    floating* colt) noexcept nogil:                               # OUT
    """The transpose of _im2col's matrix, (Ho*Wo) x (C*kh*kw): ``colt[p, r] = col[r, p]``.

    Per (oh, c, i), each output column ow reads a run of kw pixels of one image row; the
    columns whose whole run is inside the image, ow in [ow_a, ow_b), are copied as Wo rows
    of kw elements, and only the few at the borders need their own bounds.
    """
    cdef Py_ssize_t Kg = C * kh * kw
    cdef Py_ssize_t oh, ow, c, i, ih, ow_a, ow_b
    cdef const floating* src
    cdef floating* dst
    if ph > 0 or pw > 0:
        memset(colt, 0, Ho * Wo * Kg * sizeof(floating))
    _valid_range(-pw, sw, W - (kw - 1) * dw, Wo, &ow_a, &ow_b)
    for oh in range(Ho):
        for c in range(C):
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= H:
                    continue
                src = x + (c * H + ih) * W
                dst = colt + oh * Wo * Kg + (c * kh + i) * kw
                if ow_b > ow_a:
                    _gather_rows(dst + ow_a * Kg, Kg, src + (ow_a * sw - pw), sw, kw, dw,
                                 ow_b - ow_a)
                for ow in range(ow_a):
                    _im2col_t_edge(src, W, kw, sw, dw, pw, ow, dst + ow * Kg)
                for ow in range(ow_b, Wo):
                    _im2col_t_edge(src, W, kw, sw, dw, pw, ow, dst + ow * Kg)


cdef inline void _im2col_t_edge(const floating* src, Py_ssize_t W, Py_ssize_t kw,  # IN
                                Py_ssize_t sw, Py_ssize_t dw, Py_ssize_t pw, Py_ssize_t ow,
                                floating* dst) noexcept nogil:                       # OUT
    """The kw taps of output column ow that fall inside the image row ``src`` (the others
    stay 0)."""
    cdef Py_ssize_t j_lo, j_hi
    _valid_range(ow * sw - pw, dw, W, kw, &j_lo, &j_hi)
    if j_hi > j_lo:
        _gather_rows(dst + j_lo, 0, src + (ow * sw - pw + j_lo * dw), 0, j_hi - j_lo, dw, 1)


cdef void _col2im(const floating* col, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,  # IN
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                  Py_ssize_t Ho, Py_ssize_t Wo,
                  floating* dx) noexcept nogil:                                   # OUT
    """Adjoint of _im2col: every column entry is added back to the pixel it was read from
    (per (c, i, j) block, its rectangle of outputs that read inside the image)."""
    cdef Py_ssize_t c, i, j, off_h, off_w, oh_lo, oh_hi, lo, hi
    memset(dx, 0, C * H * W * sizeof(floating))
    for c in range(C):
        for i in range(kh):
            off_h = i * dh - ph
            _valid_range(off_h, sh, H, Ho, &oh_lo, &oh_hi)
            if oh_hi <= oh_lo:
                continue
            for j in range(kw):
                off_w = j * dw - pw
                _valid_range(off_w, sw, W, Wo, &lo, &hi)
                if hi <= lo:
                    continue
                _scatter_add_rows(dx + (c * H + oh_lo * sh + off_h) * W + lo * sw + off_w,
                                  sh * W,
                                  col + (((c * kh + i) * kw + j) * Ho + oh_lo) * Wo + lo, Wo,
                                  hi - lo, sw, oh_hi - oh_lo)


cdef struct Geometry:
    Py_ssize_t N, C, H, W, C_out, Cg, kh, kw, Ho, Wo, groups, og, Kg, P
    Py_ssize_t sh, sw, ph, pw, dh, dw
    bint pointwise
    bint dw_t  # weight gradient from the transposed column matrix (see _backward_chunk)


cdef Geometry _geometry(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t C_out, Py_ssize_t Cg, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t Ho, Py_ssize_t Wo, int sh, int sw, int ph, int pw,
                        int dh, int dw, int groups):
    cdef Geometry g
    g.N, g.C, g.H, g.W = N, C, H, W
    g.C_out, g.Cg, g.kh, g.kw, g.Ho, g.Wo = C_out, Cg, kh, kw, Ho, Wo
    g.sh, g.sw, g.ph, g.pw, g.dh, g.dw = sh, sw, ph, pw, dh, dw
    g.groups = groups
    g.og = C_out // groups
    g.Kg = Cg * kh * kw
    g.P = Ho * Wo
    g.pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    g.dw_t = False
    return g


cdef void _forward_sample(const Geometry* g, const floating* x, const floating* w,  # IN
                          const floating* bias, bint has_bias,                      # IN
                          floating* y, floating* col) noexcept nogil:               # OUT
    """y[n] for one sample: per group, ``y_g (og x P) = w_g (og x Kg) @ col_g (Kg x P)``."""
    cdef Py_ssize_t grp, o, p
    cdef const floating* colp
    cdef floating* yp
    cdef floating beta = 0
    for grp in range(g.groups):
        yp = y + grp * g.og * g.P
        if g.pointwise:
            colp = x + grp * g.Cg * g.H * g.W
        else:
            _im2col(x + grp * g.Cg * g.H * g.W, g.Cg, g.H, g.W, g.kh, g.kw, g.sh, g.sw,
                    g.ph, g.pw, g.dh, g.dw, g.Ho, g.Wo, col)
            colp = col
        if has_bias:  # start from the bias and let GEMM add to it (beta = 1)
            for o in range(g.og):
                for p in range(g.P):
                    yp[o * g.P + p] = bias[grp * g.og + o]
            beta = 1
        _gemm(NoTrans, NoTrans, <int> g.og, <int> g.P, <int> g.Kg, <floating> 1,
              w + grp * g.og * g.Kg, <int> g.Kg, colp, <int> g.P, beta, yp, <int> g.P)


def conv2d_forward(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
                   const floating[:, :, :, ::1] w,     # IN  (C_out, C/groups, kh, kw)
                   const floating[::1] bias,           # IN  (C_out,) or (0,) for none
                   floating[:, :, :, ::1] y,           # OUT (N, C_out, Ho, Wo)
                   floating[:, ::1] work,              # scratch (n_threads, >= Kg*Ho*Wo)
                   int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                   int n_threads):
    """Forward convolution into ``y``; samples are split over ``n_threads`` threads."""
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                                w.shape[0], w.shape[1], w.shape[2], w.shape[3],
                                y.shape[2], y.shape[3], sh, sw, ph, pw, dh, dw, groups)
    cdef bint has_bias = bias.shape[0] > 0
    cdef Py_ssize_t n, tid = 0
    cdef floating* col = NULL
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        col = &work[tid, 0]
        for n in prange(g.N, schedule='static'):
            _forward_sample(&g, &x[n, 0, 0, 0], &w[0, 0, 0, 0], &bias[0], has_bias,
                            &y[n, 0, 0, 0], col)


cdef void _backward_chunk(const Geometry* g, Py_ssize_t n0, Py_ssize_t n1,
                          const floating* dy, const floating* x, const floating* w,  # IN
                          floating* dx, bint need_dx,                                # OUT
                          floating* dw_part,                                         # OUT
                          floating* col) noexcept nogil:
    """Samples [n0, n1): their weight gradient summed in order into ``dw_part``
    (``dw_g += dy_g (og x P) @ col_g^T (P x Kg)``) and, if asked, ``dx[n]`` via
    ``col = w_g^T (Kg x og) @ dy_g`` followed by col2im.

    With ``g.dw_t`` the weight gradient reads the column matrix built transposed,
    (P x Kg) by _im2col_t, so that BLAS gets it untransposed (see conv2d_backward)."""
    cdef Py_ssize_t n, grp
    cdef Py_ssize_t x_stride = g.C * g.H * g.W, y_stride = g.C_out * g.P
    cdef Py_ssize_t x_group = g.Cg * g.H * g.W, y_group = g.og * g.P
    cdef const floating* xs
    cdef const floating* dys
    cdef const floating* colp
    cdef floating* dxs
    cdef floating beta
    for n in range(n0, n1):
        beta = 0 if n == n0 else 1
        for grp in range(g.groups):
            xs = x + n * x_stride + grp * x_group
            dys = dy + n * y_stride + grp * y_group
            dxs = dx + n * x_stride + grp * x_group
            if g.dw_t:
                _im2col_t(xs, g.Cg, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
                          g.dh, g.dw, g.Ho, g.Wo, col)
                _gemm(NoTrans, NoTrans, <int> g.og, <int> g.Kg, <int> g.P, <floating> 1,
                      dys, <int> g.P, col, <int> g.Kg, beta,
                      dw_part + grp * g.og * g.Kg, <int> g.Kg)
            else:
                if g.pointwise:
                    colp = xs
                else:
                    _im2col(xs, g.Cg, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
                            g.dh, g.dw, g.Ho, g.Wo, col)
                    colp = col
                _gemm(NoTrans, Trans, <int> g.og, <int> g.Kg, <int> g.P, <floating> 1,
                      dys, <int> g.P, colp, <int> g.P, beta,
                      dw_part + grp * g.og * g.Kg, <int> g.Kg)
            if not need_dx:
                continue
            if g.pointwise:
                _gemm(Trans, NoTrans, <int> g.Kg, <int> g.P, <int> g.og, <floating> 1,
                      w + grp * g.og * g.Kg, <int> g.Kg, dys, <int> g.P, <floating> 0,
                      dxs, <int> g.P)
            else:
                _gemm(Trans, NoTrans, <int> g.Kg, <int> g.P, <int> g.og, <floating> 1,
                      w + grp * g.og * g.Kg, <int> g.Kg, dys, <int> g.P, <floating> 0,
                      col, <int> g.P)
                _col2im(col, g.Cg, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
                        g.dh, g.dw, g.Ho, g.Wo, dxs)


def conv2d_backward(const floating[:, :, :, ::1] dy,    # IN  (N, C_out, Ho, Wo)
                    const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
                    const floating[:, :, :, ::1] w,     # IN  (C_out, C/groups, kh, kw)
                    floating[:, :, :, ::1] dx,          # OUT (N, C, H, W)
                    floating[:, :, ::1] dw_part,        # OUT (n_chunks, C_out, Kg)
                    floating[:, ::1] work,              # scratch (n_threads, >= Kg*Ho*Wo)
                    int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                    bint need_dx, bint dw_t, int n_threads):
    """Input gradient into ``dx`` and per-chunk weight gradients into ``dw_part``.

    ``dw_t`` builds the weight gradient's column matrix transposed, (P x Kg) instead of
    (Kg x P). Both give the same gradient up to rounding; which is faster depends on the
    shapes (the caller chooses, from the shapes only).

    The batch is cut into ``n_chunks = dw_part.shape[0]`` fixed chunks (chosen by the caller
    from the shapes only); chunk c covers samples [c*N//n_chunks, (c+1)*N//n_chunks) and
    sums them in order. :func:`sum_chunks` then adds the chunks in order, so the result
    does not depend on how chunks were spread over threads.
    """
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                                w.shape[0], w.shape[1], w.shape[2], w.shape[3],
                                dy.shape[2], dy.shape[3], sh, sw, ph, pw, dh, dw, groups)
    g.dw_t = dw_t
    cdef Py_ssize_t n_chunks = dw_part.shape[0]
    cdef Py_ssize_t chunk, tid = 0
    cdef floating* col = NULL
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        col = &work[tid, 0]
        for chunk in prange(n_chunks, schedule='static'):
            _backward_chunk(&g, chunk * g.N // n_chunks, (chunk + 1) * g.N // n_chunks,
                            &dy[0, 0, 0, 0], &x[0, 0, 0, 0], &w[0, 0, 0, 0],
                            &dx[0, 0, 0, 0], need_dx, &dw_part[chunk, 0, 0], col)


cdef void _sum_column(const floating* parts, Py_ssize_t n_parts, Py_ssize_t stride,
                      floating* out) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating s = parts[0]
    for c in range(1, n_parts):
        s = s + parts[c * stride]
    out[0] = s


def sum_chunks(const floating[:, ::1] parts,   # IN  (n_chunks, M)
               floating[::1] out,              # OUT (M,)
               int n_threads):
    """``out[m] = parts[0, m] + parts[1, m] + ...``, always in chunk order."""
    cdef Py_ssize_t m
    cdef Py_ssize_t M = parts.shape[1]
    for m in prange(M, nogil=True, schedule='static', num_threads=n_threads):
        _sum_column(&parts[0, m], parts.shape[0], M, &out[m])


cdef void _channel_sum(const floating* dy, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t P,
                       floating* out) noexcept nogil:
    cdef Py_ssize_t n, k
    cdef double acc[CNN_LANES]
    cdef double s = 0
    for k in range(CNN_LANES):
        acc[k] = 0
    for n in range(N):
        _sum_lanes(acc, dy + n * stride, P)
    for k in range(CNN_LANES):
        s = s + acc[k]
    out[0] = <floating> s


def bias_grad(const floating[:, :, ::1] dy,   # IN  (N, C_out, P)
              floating[::1] db,               # OUT (C_out,)
              int n_threads):
    """``db[o] = sum over n and p of dy[n, o, p]``, one channel per task, accumulated in
    double partial sums (see cnn_sum_lanes) in a fixed order."""
    cdef Py_ssize_t o
    cdef Py_ssize_t C_out = dy.shape[1], P = dy.shape[2]
    for o in prange(C_out, nogil=True, schedule='static', num_threads=n_threads):
        _channel_sum(&dy[0, o, 0], dy.shape[0], C_out * P, P, &db[o])

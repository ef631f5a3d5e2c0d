"""Pooling kernels on NCHW planes; the N*C planes are split over OpenMP threads.

A window of output (oh, ow) covers input rows ``oh*sh - ph + i`` and columns
``ow*sw - pw + j`` for taps ``0 <= i < kh, 0 <= j < kw``; taps outside the image are
padding. The kernels walk whole output rows one tap at a time (a strided, vectorisable row
operation from csrc/cnncore_simd.h) instead of one window at a time.

Max-pool argmax: the first element of the window in row-major order on ties, the first NaN
if there is one (as numpy.argmax). Either the forward keeps it (``max_pool2d_forward_indices``
tracks, next to each running max, the offset of the tap that set it, and writes the flat
index ``h*W + w`` into the input plane, as PyTorch) and the backward scatters the output
gradient there (``max_pool2d_backward_indices``), or the backward finds it again from x,
window by window (``max_pool2d_backward``); both give the same bits.
Each plane is handled by one thread in a fixed order: results do not depend on the number
of threads.
"""
from libc.string cimport memset
from libc.math cimport INFINITY
from libc.stdint cimport int32_t, int64_t, uint64_t
from cython cimport floating
from cython.parallel cimport prange

from cnncore._kernels._geometry cimport _valid_range
from cnncore._kernels._simd cimport (_max_row, _max_row_arg, _max_pool_2x2, _axpy,
                                     _scatter_axpy, cnn_max_pool_2x2_arg_f)

cdef enum:
    CHUNK = 256  # output columns handled at once by the kernels that need a row buffer


cdef struct Window:
    Py_ssize_t H, W, Ho, Wo, kh, kw, sh, sw, ph, pw


cdef Window _window(Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, int kh, int kw,
                    int sh, int sw, int ph, int pw):
    cdef Window g
    g.H, g.W, g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw = H, W, Ho, Wo, kh, kw, sh, sw, ph, pw
    return g


cdef Py_ssize_t _argmax_window(const floating* x, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t h1,
                               Py_ssize_t w0, Py_ssize_t w1) noexcept nogil:
    """Flat index of the largest element of x[h0:h1, w0:w1]: the first one on ties, the
    first NaN if there is one (as numpy.argmax)."""
    cdef Py_ssize_t h, c, best = h0 * W + w0
    cdef floating v, m = x[best]
    if m != m:
        return best
    for h in range(h0, h1):
        for c in range(w0, w1):
            v = x[h * W + c]
            if v > m or v != v:
                m = v
                best = h * W + c
                if v != v:
                    return best
    return best


cdef inline void _clip(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t c0, Py_ssize_t c1,
                       Py_ssize_t* a, Py_ssize_t* b) noexcept nogil:
    """[a, b) = [lo, hi) intersected with the chunk [c0, c1)."""
    a[0] = lo if lo > c0 else c0
    b[0] = hi if hi < c1 else c1
    if b[0] < a[0]:
        b[0] = a[0]


# ----------------------------------------------------------------------------- max pooling

cdef void _max_pool_plane(const Window* g, const floating* x, floating* y) noexcept nogil:
    cdef Py_ssize_t oh, ow, i, j, ih, off, lo, hi
    cdef floating* row
    for oh in range(g.Ho):
        row = y + oh * g.Wo
        for ow in range(g.Wo):
            row[ow] = -INFINITY
        for i in range(g.kh):
            ih = oh * g.sh - g.ph + i
            if ih < 0 or ih >= g.H:
                continue
            for j in range(g.kw):
                off = j - g.pw
                _valid_range(off, g.sw, g.W, g.Wo, &lo, &hi)
                _max_row(row + lo, x + ih * g.W + lo * g.sw + off, hi - lo, g.sw)


cdef void _max_pool_plane_backward(const Window* g, const floating* dy, const floating* x,
                                   floating* dx) noexcept nogil:
    """Each output gradient goes to its window's argmax, found again from x."""
    cdef Py_ssize_t oh, ow, h0, h1, w0, w1, a
    memset(dx, 0, g.H * g.W * sizeof(floating))
    for oh in range(g.Ho):
        h0 = oh * g.sh - g.ph
        h1 = h0 + g.kh if h0 + g.kh < g.H else g.H
        h0 = h0 if h0 > 0 else 0
        for ow in range(g.Wo):
            w0 = ow * g.sw - g.pw
            w1 = w0 + g.kw if w0 + g.kw < g.W else g.W
            w0 = w0 if w0 > 0 else 0
            a = _argmax_window(x, g.W, h0, h1, w0, w1)
            dx[a] = dx[a] + dy[oh * g.Wo + ow]


cdef void _max_pool_plane_2x2_rows(Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                                   const floating* x, floating* y, int64_t* idx) noexcept nogil:
    """_max_pool_plane_indices for the 2x2/2 unpadded window, taps 0..3 in row-major order
    through cnn_max_row_arg (selects, not branches: ReLU outputs make ties common); used for
    double, for which cnn_max_pool_2x2_arg has no version (see csrc/cnncore_simd.h)."""
    cdef Py_ssize_t oh, ow, k, c0, c1
    cdef Py_ssize_t n_chunks = (Wo + CHUNK - 1) // CHUNK
    cdef floating* row
    cdef const floating* r0
    cdef int32_t tap[CHUNK]
    cdef Py_ssize_t offset[4]
    offset[0] = 0
    offset[1] = 1
    offset[2] = W
    offset[3] = W + 1
    for oh in range(Ho):
        for k in range(n_chunks):
            c0 = k * CHUNK
            c1 = c0 + CHUNK if c0 + CHUNK < Wo else Wo
            row = y + oh * Wo + c0
            r0 = x + 2 * oh * W + 2 * c0
            for ow in range(c1 - c0):  # tap (0, 0) starts the running max
                row[ow] = r0[2 * ow]
                tap[ow] = 0
            _max_row_arg(row, tap, r0 + 1, c1 - c0, 2, 1)
            _max_row_arg(row, tap, r0 + W, c1 - c0, 2, 2)
            _max_row_arg(row, tap, r0 + W + 1, c1 - c0, 2, 3)
            for ow in range(c0, c1):
                idx[oh * Wo + ow] = 2 * oh * W + 2 * ow + offset[tap[ow - c0]]


cdef inline void _max_pool_plane_2x2_arg(Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                                         const floating* x, floating* y,
                                         int64_t* idx) noexcept nogil:
    if floating is float:
        cnn_max_pool_2x2_arg_f(y, idx, x, W, Ho, Wo)  # a whole plane per call
    else:
        _max_pool_plane_2x2_rows(W, Ho, Wo, x, y, idx)


cdef inline bint _is_2x2(const Window* g) noexcept nogil:
    """The common 2x2, stride-2, unpadded case (e.g. LeNet's pools): whole planes through
    cnn_max_pool_2x2* (csrc/cnncore_simd.h), without the general kernels' per-tap window
    arithmetic and running-max rows, which cost more than the maxima on small planes."""
    return g.kh == 2 and g.kw == 2 and g.sh == 2 and g.sw == 2 and g.ph == 0 and g.pw == 0


def max_pool2d_forward(const floating[:, :, ::1] x,  # IN  (N*C, H, W)
                       floating[:, :, ::1] y,        # OUT (N*C, Ho, Wo)
                       int kh, int kw, int sh, int sw, int ph, int pw, int n_threads):
    cdef Window g = _window(x.shape[1], x.shape[2], y.shape[1], y.shape[2], kh, kw, sh, sw,
                            ph, pw)
    cdef Py_ssize_t p
    cdef bint two = _is_2x2(&g)
    for p in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        if two:
            _max_pool_2x2(&y[p, 0, 0], &x[p, 0, 0], g.W, g.Ho, g.Wo)
        else:
            _max_pool_plane(&g, &x[p, 0, 0], &y[p, 0, 0])


def max_pool2d_backward(const floating[:, :, ::1] dy,  # IN  (N*C, Ho, Wo)
                        const floating[:, :, ::1] x,   # IN  (N*C, H, W)
                        floating[:, :, ::1] dx,        # OUT (N*C, H, W)
                        int kh, int kw, int sh, int sw, int ph, int pw, int n_threads):
    cdef Window g = _window(x.shape[1], x.shape[2], dy.shape[1], dy.shape[2], kh, kw, sh, sw,
                            ph, pw)
    cdef Py_ssize_t p
    for p in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _max_pool_plane_backward(&g, &dy[p, 0, 0], &x[p, 0, 0], &dx[p, 0, 0])


cdef void _max_pool_plane_indices(const Window* g, const floating* x, floating* y,
                                  int64_t* idx) noexcept nogil:
    """As _max_pool_plane, and the flat index of each window's argmax into idx."""
    cdef Py_ssize_t oh, ow, i, j, i0, j0, top, ih, off, lo, hi, c0, c1, a, b, k, base
    cdef Py_ssize_t n_chunks = (g.Wo + CHUNK - 1) // CHUNK
    cdef int32_t tap[CHUNK]  # offset (i*W + j) of the tap that set the running max
    cdef floating* row
    for oh in range(g.Ho):
        row = y + oh * g.Wo
        top = oh * g.sh - g.ph  # input row of tap i = 0 (may be padding)
        i0 = -top if top < 0 else 0
        base = top * g.W - g.pw  # flat index of output ow, tap (i, j): base + ow*sw + i*W + j
        for k in range(n_chunks):
            c0 = k * CHUNK
            c1 = c0 + CHUNK if c0 + CHUNK < g.Wo else g.Wo
            # until a tap beats -inf, the argmax is the window's first real cell
            for ow in range(c0, c1):
                row[ow] = -INFINITY
                j0 = g.pw - ow * g.sw
                tap[ow - c0] = <int32_t> (i0 * g.W + (j0 if j0 > 0 else 0))
            for i in range(i0, g.kh):
                ih = top + i
                if ih >= g.H:
                    break
                for j in range(g.kw):
                    off = j - g.pw
                    _valid_range(off, g.sw, g.W, g.Wo, &lo, &hi)
                    _clip(lo, hi, c0, c1, &a, &b)
                    _max_row_arg(row + a, tap + a - c0, x + ih * g.W + a * g.sw + off, b - a,
                                 g.sw, <int32_t> (i * g.W + j))
            for ow in range(c0, c1):
                idx[oh * g.Wo + ow] = base + ow * g.sw + tap[ow - c0]


cdef Py_ssize_t _max_pool_plane_scatter(const floating* dy, const int64_t* idx, Py_ssize_t n,
                                        floating* dx, Py_ssize_t P) noexcept nogil:
    """dx = 0, then dx[idx[k]] += dy[k] in order; returns the number of indices outside
    [0, P), which are skipped."""
    cdef Py_ssize_t k, bad = 0
    cdef int64_t a
    memset(dx, 0, P * sizeof(floating))
    for k in range(n):
        a = idx[k]
        if <uint64_t> a < <uint64_t> P:  # also rejects a < 0
            dx[a] = dx[a] + dy[k]
        else:
            bad = bad + 1
    return bad


def max_pool2d_forward_indices(const floating[:, :, ::1] x,  # IN  (N*C, H, W)
                               floating[:, :, ::1] y,        # OUT (N*C, Ho, Wo)
                               int64_t[:, :, ::1] idx,       # OUT (N*C, Ho, Wo), h*W + w
                               int kh, int kw, int sh, int sw, int ph, int pw, int n_threads):
    """max_pool2d_forward that also writes each window's argmax; tap offsets are int32, so
    kh * W + kw must stay below 2**31 (checked by the caller)."""
    cdef Window g = _window(x.shape[1], x.shape[2], y.shape[1], y.shape[2], kh, kw, sh, sw,
                            ph, pw)
    cdef Py_ssize_t p
    cdef bint two = _is_2x2(&g)
    for p in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        if two:
            _max_pool_plane_2x2_arg(g.W, g.Ho, g.Wo, &x[p, 0, 0], &y[p, 0, 0], &idx[p, 0, 0])
        else:
            _max_pool_plane_indices(&g, &x[p, 0, 0], &y[p, 0, 0], &idx[p, 0, 0])


def max_pool2d_backward_indices(const floating[:, ::1] dy,  # IN  (N*C, Ho*Wo)
                                const int64_t[:, ::1] idx,  # IN  (N*C, Ho*Wo), h*W + w
                                floating[:, ::1] dx,        # OUT (N*C, H*W)
                                int n_threads):
    """dx[p, idx[p, k]] += dy[p, k] over zeroed planes; returns the number of indices
    outside [0, H*W) (skipped: nothing is written out of bounds)."""
    if idx.shape[0] != dy.shape[0] or idx.shape[1] != dy.shape[1] or dx.shape[0] != dy.shape[0]:
        raise ValueError("max_pool2d_backward_indices: dy, idx and dx do not match")
    cdef Py_ssize_t p, bad = 0
    for p in prange(dx.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        bad += _max_pool_plane_scatter(&dy[p, 0], &idx[p, 0], dy.shape[1], &dx[p, 0],
                                       dx.shape[1])
    return bad


# ----------------------------------------------------------------------------- average pooling

cdef inline double _inv_count(const Window* g, Py_ssize_t oh, Py_ssize_t ow,
                              bint count_include_pad) noexcept nogil:
    """1 / (number of cells averaged by output (oh, ow))."""
    cdef Py_ssize_t h0, h1, w0, w1
    if count_include_pad:
        return 1.0 / (g.kh * g.kw)
    h0 = oh * g.sh - g.ph
    w0 = ow * g.sw - g.pw
    h1 = h0 + g.kh if h0 + g.kh < g.H else g.H
    w1 = w0 + g.kw if w0 + g.kw < g.W else g.W
    h0 = h0 if h0 > 0 else 0
    w0 = w0 if w0 > 0 else 0
    return 1.0 / ((h1 - h0) * (w1 - w0))


cdef void _avg_pool_plane(const Window* g, const floating* x, floating* y,
                          bint count_include_pad) noexcept nogil:
    cdef Py_ssize_t oh, ow, i, j, ih, off, lo, hi
    cdef floating* row
    for oh in range(g.Ho):
        row = y + oh * g.Wo
        for ow in range(g.Wo):
            row[ow] = 0
        for i in range(g.kh):
            ih = oh * g.sh - g.ph + i
            if ih < 0 or ih >= g.H:
                continue
            for j in range(g.kw):
                off = j - g.pw
                _valid_range(off, g.sw, g.W, g.Wo, &lo, &hi)
                _axpy(row + lo, x + ih * g.W + lo * g.sw + off, hi - lo, g.sw, 1)
        for ow in range(g.Wo):
            row[ow] = <floating> (row[ow] * _inv_count(g, oh, ow, count_include_pad))


cdef void _avg_pool_plane_backward(const Window* g, const floating* dy, floating* dx,
                                   bint count_include_pad) noexcept nogil:
    cdef Py_ssize_t oh, ow, i, j, ih, off, lo, hi, c0, c1, a, b
    cdef floating share[CHUNK]
    memset(dx, 0, g.H * g.W * sizeof(floating))
    cdef Py_ssize_t n_chunks = (g.Wo + CHUNK - 1) // CHUNK, k
    for oh in range(g.Ho):
        for k in range(n_chunks):
            c0 = k * CHUNK
            c1 = c0 + CHUNK if c0 + CHUNK < g.Wo else g.Wo
            for ow in range(c0, c1):
                share[ow - c0] = <floating> (dy[oh * g.Wo + ow] *
                                              _inv_count(g, oh, ow, count_include_pad))
            for i in range(g.kh):
                ih = oh * g.sh - g.ph + i
                if ih < 0 or ih >= g.H:
                    continue
                for j in range(g.kw):
                    off = j - g.pw
                    _valid_range(off, g.sw, g.W, g.Wo, &lo, &hi)
                    _clip(lo, hi, c0, c1, &a, &b)
                    _scatter_axpy(dx + ih * g.W + a * g.sw + off, share + a - c0, b - a,
                                  g.sw, 1)


def avg_pool2d_forward(const floating[:, :, ::1] x,  # IN  (N*C, H, W)
                       floating[:, :, ::1] y,        # OUT (N*C, Ho, Wo)
                       int kh, int kw, int sh, int sw, int ph, int pw,
                       bint count_include_pad, int n_threads):
    cdef Window g = _window(x.shape[1], x.shape[2], y.shape[1], y.shape[2], kh, kw, sh, sw,
                            ph, pw)
    cdef Py_ssize_t p
    for p in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _avg_pool_plane(&g, &x[p, 0, 0], &y[p, 0, 0], count_include_pad)


def avg_pool2d_backward(const floating[:, :, ::1] dy,  # IN  (N*C, Ho, Wo)
                        floating[:, :, ::1] dx,        # OUT (N*C, H, W)
                        int kh, int kw, int sh, int sw, int ph, int pw,
                        bint count_include_pad, int n_threads):
    cdef Window g = _window(dx.shape[1], dx.shape[2], dy.shape[1], dy.shape[2], kh, kw, sh,
                            sw, ph, pw)
    cdef Py_ssize_t p
    for p in prange(dx.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _avg_pool_plane_backward(&g, &dy[p, 0, 0], &dx[p, 0, 0], count_include_pad)


# ----------------------------------------------------------------------------- global average

cdef void _plane_mean(const floating* x, Py_ssize_t P, floating* out) noexcept nogil:
    cdef Py_ssize_t p
    cdef double s = 0
    for p in range(P):
        s = s + x[p]
    out[0] = <floating> (s / P)


cdef void _plane_fill(floating* dx, Py_ssize_t P, floating v) noexcept nogil:
    cdef Py_ssize_t p
    for p in range(P):
        dx[p] = v


def global_avg_pool2d_forward(const floating[:, ::1] x,  # IN  (N*C, H*W)
                              floating[::1] y,           # OUT (N*C,)
                              int n_threads):
    cdef Py_ssize_t i
    for i in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _plane_mean(&x[i, 0], x.shape[1], &y[i])


def global_avg_pool2d_backward(const floating[::1] dy,  # IN  (N*C,)
                               floating[:, ::1] dx,     # OUT (N*C, H*W)
                               int n_threads):
    cdef Py_ssize_t i
    for i in prange(dx.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _plane_fill(&dx[i, 0], dx.shape[1], dy[i] / dx.shape[1])

"""Pooling kernels on NCHW planes; the N*C planes are split over OpenMP threads.

A window of output (oh, ow) covers input rows ``oh*sh - ph .. + kh`` and columns
``ow*sw - pw .. + kw``; the part outside the image is padding. Each plane is handled by
one thread, in a fixed order, so overlapping windows add up identically for any thread count.
"""
from libc.string cimport memset
from cython cimport floating
from cython.parallel cimport prange


cdef inline Py_ssize_t _max(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


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


cdef void _max_pool_plane(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                          Py_ssize_t pw) noexcept nogil:
    cdef Py_ssize_t oh, ow, h0, w0
    for oh in range(Ho):
        h0 = oh * sh - ph
        for ow in range(Wo):
            w0 = ow * sw - pw
            y[oh * Wo + ow] = x[_argmax_window(x, W, _max(h0, 0), _min(h0 + kh, H),
                                               _max(w0, 0), _min(w0 + kw, W))]


cdef void _max_pool_plane_backward(const floating* dy, const floating* x, floating* dx,
                                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                                   Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                   Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    cdef Py_ssize_t oh, ow, h0, w0, a
    memset(dx, 0, H * W * sizeof(floating))
    for oh in range(Ho):
        h0 = oh * sh - ph
        for ow in range(Wo):
            w0 = ow * sw - pw
            a = _argmax_window(x, W, _max(h0, 0), _min(h0 + kh, H), _max(w0, 0),
                               _min(w0 + kw, W))
            dx[a] = dx[a] + dy[oh * Wo + ow]


def max_pool2d_forward(const floating[:, :, ::1] x,  # IN  (N*C, H, W)
                       floating[:, :, ::1] y,        # OUT (N*C, Ho, Wo)
                       int kh, int kw, int sh, int sw, int ph, int pw, int n_threads):
    cdef Py_ssize_t i
    for i in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _max_pool_plane(&x[i, 0, 0], &y[i, 0, 0], x.shape[1], x.shape[2], y.shape[1],
                        y.shape[2], kh, kw, sh, sw, ph, pw)


def max_pool2d_backward(const floating[:, :, ::1] dy,  # IN  (N*C, Ho, Wo)
                        const floating[:, :, ::1] x,   # IN  (N*C, H, W)
                        floating[:, :, ::1] dx,        # OUT (N*C, H, W)
                        int kh, int kw, int sh, int sw, int ph, int pw, int n_threads):
    cdef Py_ssize_t i
    for i in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _max_pool_plane_backward(&dy[i, 0, 0], &x[i, 0, 0], &dx[i, 0, 0], x.shape[1],
                                 x.shape[2], dy.shape[1], dy.shape[2], kh, kw, sh, sw, ph, pw)


cdef inline Py_ssize_t _divisor(Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t w0, Py_ssize_t w1,
                                Py_ssize_t kh, Py_ssize_t kw, bint count_include_pad) noexcept nogil:
    if count_include_pad:
        return kh * kw
    return (h1 - h0) * (w1 - w0)


cdef void _avg_pool_plane(const floating* x, floating* y, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                          bint count_include_pad) noexcept nogil:
    cdef Py_ssize_t oh, ow, h, c, h0, h1, w0, w1
    cdef double s
    for oh in range(Ho):
        h0 = _max(oh * sh - ph, 0)
        h1 = _min(oh * sh - ph + kh, H)
        for ow in range(Wo):
            w0 = _max(ow * sw - pw, 0)
            w1 = _min(ow * sw - pw + kw, W)
            s = 0
            for h in range(h0, h1):
                for c in range(w0, w1):
                    s = s + x[h * W + c]
            y[oh * Wo + ow] = <floating> (s / _divisor(h0, h1, w0, w1, kh, kw,
                                                       count_include_pad))


cdef void _avg_pool_plane_backward(const floating* dy, floating* dx, Py_ssize_t H,
                                   Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh,
                                   Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                   Py_ssize_t pw, bint count_include_pad) noexcept nogil:
    cdef Py_ssize_t oh, ow, h, c, h0, h1, w0, w1
    cdef floating share
    memset(dx, 0, H * W * sizeof(floating))
    for oh in range(Ho):
        h0 = _max(oh * sh - ph, 0)
        h1 = _min(oh * sh - ph + kh, H)
        for ow in range(Wo):
            w0 = _max(ow * sw - pw, 0)
            w1 = _min(ow * sw - pw + kw, W)
            share = dy[oh * Wo + ow] / _divisor(h0, h1, w0, w1, kh, kw, count_include_pad)
            for h in range(h0, h1):
                for c in range(w0, w1):
                    dx[h * W + c] = dx[h * W + c] + share


def avg_pool2d_forward(const floating[:, :, ::1] x,  # IN  (N*C, H, W)
                       floating[:, :, ::1] y,        # OUT (N*C, Ho, Wo)
                       int kh, int kw, int sh, int sw, int ph, int pw,
                       bint count_include_pad, int n_threads):
    cdef Py_ssize_t i
    for i in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _avg_pool_plane(&x[i, 0, 0], &y[i, 0, 0], x.shape[1], x.shape[2], y.shape[1],
                        y.shape[2], kh, kw, sh, sw, ph, pw, count_include_pad)


def avg_pool2d_backward(const floating[:, :, ::1] dy,  # IN  (N*C, Ho, Wo)
                        floating[:, :, ::1] dx,        # OUT (N*C, H, W)
                        int kh, int kw, int sh, int sw, int ph, int pw,
                        bint count_include_pad, int n_threads):
    cdef Py_ssize_t i
    for i in prange(dx.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _avg_pool_plane_backward(&dy[i, 0, 0], &dx[i, 0, 0], dx.shape[1], dx.shape[2],
                                 dy.shape[1], dy.shape[2], kh, kw, sh, sw, ph, pw,
                                 count_include_pad)


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

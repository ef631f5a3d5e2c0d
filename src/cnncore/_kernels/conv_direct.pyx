"""Direct convolution for one input channel per group (``C_in / groups == 1``): depthwise
convolutions (groups = C_in) and single-channel inputs (e.g. LeNet's first layer).

With one input channel per output there is nothing for a GEMM to reduce over but the
kh*kw taps, so im2col + GEMM wastes its time on tiny matrices. These kernels walk the
output rows instead: for each tap (i, j) an output row gets ``w[o, 0, i, j]`` times a
(strided) input row — a vectorised axpy from csrc/cnncore_simd.h.

Output channel o reads input channel ``o // (C_out / groups)``. Each output sums its taps
in (i, j) order; the weight gradient of a channel sums the batch in order inside one task,
so results are the same for any thread count.

3x3 undilated kernels of stride 1 or 2 (the depthwise layers of MobileNet-style networks)
take the plane kernels of csrc/cnncore_direct.h instead: one task per (image, input channel)
plane, copied once into a zero-bordered buffer; one pass per output row with the nine
weights in registers; the input gradient is the same kernel on dy with the flipped weights
and padding 2 - p (stride 2: cnn_dw3_dx_s2, even and odd columns apart); the weight
gradient gets nine sums per plane, stored per image and then added over the batch in order
(still one fixed order per channel, whatever the thread count).
"""
import numpy as np

from libc.string cimport memset
from cython cimport floating
from cython.parallel cimport prange, threadid

from cnncore._kernels._geometry cimport _valid_range
from cnncore._kernels._simd cimport _axpy, _scatter_axpy, _dot


cdef extern from "cnncore_direct.h" nogil:
    void cnn_dw3_pad_f(float* xp, const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho,
                       Py_ssize_t Wo, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t s)
    void cnn_dw3_pad_d(double* xp, const double* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho,
                       Py_ssize_t Wo, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t s)
    void cnn_dw3_plane_f(float* y, const float* xp, const float* w, float bias, int accumulate,
                         Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t s)
    void cnn_dw3_plane_d(double* y, const double* xp, const double* w, double bias,
                         int accumulate, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t s)
    void cnn_dw3_wgrad_plane_f(double* out, const float* dy, const float* xp, Py_ssize_t Ho,
                               Py_ssize_t Wo, Py_ssize_t s)
    void cnn_dw3_wgrad_plane_d(double* out, const double* dy, const double* xp, Py_ssize_t Ho,
                               Py_ssize_t Wo, Py_ssize_t s)
    void cnn_dw3_dx_s2_f(float* dx, const float* gp, const float* w, int accumulate,
                         Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                         Py_ssize_t ph, Py_ssize_t pw, float* eo)
    void cnn_dw3_dx_s2_d(double* dx, const double* gp, const double* w, int accumulate,
                         Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                         Py_ssize_t ph, Py_ssize_t pw, double* eo)


cdef inline Py_ssize_t _dw3_pad_size(Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t s) noexcept nogil:
    """Elements of the padded plane of a stride-s 3x3 kernel with an Ho x Wo output."""
    return (s * (Ho - 1) + 3) * (s * (Wo - 1) + 3)


cdef inline void _dw3_pad(floating* xp, const floating* x, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t ph, Py_ssize_t pw,
                          Py_ssize_t s) noexcept nogil:
    """xp = the H x W plane x after ph rows and pw columns of zeros, zeros after it too: the
    rows and columns a stride-s 3x3 kernel with an Ho x Wo output reads."""
    if floating is float:
        cnn_dw3_pad_f(xp, x, H, W, Ho, Wo, ph, pw, s)
    else:
        cnn_dw3_pad_d(xp, x, H, W, Ho, Wo, ph, pw, s)


cdef inline void _dw3_plane(floating* y, const floating* xp, const floating* w, floating bias,
                            int accumulate, Py_ssize_t Ho, Py_ssize_t Wo,
                            Py_ssize_t s) noexcept nogil:
    if floating is float:
        cnn_dw3_plane_f(y, xp, w, bias, accumulate, Ho, Wo, s)
    else:
        cnn_dw3_plane_d(y, xp, w, bias, accumulate, Ho, Wo, s)


cdef inline void _dw3_wgrad_plane(double* out, const floating* dy, const floating* xp,
                                  Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t s) noexcept nogil:
    if floating is float:
        cnn_dw3_wgrad_plane_f(out, dy, xp, Ho, Wo, s)
    else:
        cnn_dw3_wgrad_plane_d(out, dy, xp, Ho, Wo, s)


cdef inline void _dw3_dx_s2(floating* dx, const floating* gp, const floating* w,
                            int accumulate, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho,
                            Py_ssize_t Wo, Py_ssize_t ph, Py_ssize_t pw,
                            floating* eo) noexcept nogil:
    if floating is float:
        cnn_dw3_dx_s2_f(dx, gp, w, accumulate, H, W, Ho, Wo, ph, pw, eo)
    else:
        cnn_dw3_dx_s2_d(dx, gp, w, accumulate, H, W, Ho, Wo, ph, pw, eo)


cdef struct Plane:
    Py_ssize_t H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw


cdef void _forward_plane(const Plane* g, const floating* x, const floating* w,  # IN
                         floating bias, floating* y) noexcept nogil:           # OUT
    cdef Py_ssize_t oh, ow, i, j, ih, off, lo, hi
    for oh in range(g.Ho):
        for ow in range(g.Wo):
            y[oh * g.Wo + ow] = bias
        for i in range(g.kh):
            ih = oh * g.sh - g.ph + i * g.dh
            if ih < 0 or ih >= g.H:
                continue
            for j in range(g.kw):
                off = j * g.dw - g.pw
                _valid_range(off, g.sw, g.W, g.Wo, &lo, &hi)
                _axpy(y + oh * g.Wo + lo, x + ih * g.W + lo * g.sw + off, hi - lo, g.sw,
                      w[i * g.kw + j])


cdef void _backward_input_plane(const Plane* g, const floating* dy, const floating* w,
                                Py_ssize_t n_out, Py_ssize_t dy_stride,
                                floating* dx) noexcept nogil:
    """dx of one input channel from its ``n_out`` output channels (dy planes
    ``dy_stride`` apart, weights ``kh*kw`` apart)."""
    cdef Py_ssize_t o, oh, i, j, ih, off, lo, hi
    memset(dx, 0, g.H * g.W * sizeof(floating))
    for o in range(n_out):
        for oh in range(g.Ho):
            for i in range(g.kh):
                ih = oh * g.sh - g.ph + i * g.dh
                if ih < 0 or ih >= g.H:
                    continue
                for j in range(g.kw):
                    off = j * g.dw - g.pw
                    _valid_range(off, g.sw, g.W, g.Wo, &lo, &hi)
                    _scatter_axpy(dx + ih * g.W + lo * g.sw + off,
                                  dy + o * dy_stride + oh * g.Wo + lo, hi - lo, g.sw,
                                  w[(o * g.kh + i) * g.kw + j])


cdef void _backward_weight_channel(const Plane* g, const floating* dy, const floating* x,
                                   Py_ssize_t N, Py_ssize_t dy_stride, Py_ssize_t x_stride,
                                   floating* dw) noexcept nogil:
    """dw[i, j] = sum over the batch and output pixels of dy * the input pixel tap (i, j)
    read; one output channel, accumulated in double in a fixed order."""
    cdef Py_ssize_t n, oh, i, j, ih, off, lo, hi
    cdef double s
    for i in range(g.kh):
        for j in range(g.kw):
            off = j * g.dw - g.pw
            _valid_range(off, g.sw, g.W, g.Wo, &lo, &hi)
            s = 0
            for n in range(N):
                for oh in range(g.Ho):
                    ih = oh * g.sh - g.ph + i * g.dh
                    if ih < 0 or ih >= g.H:
                        continue
                    s = s + _dot(dy + n * dy_stride + oh * g.Wo + lo,
                                 x + n * x_stride + ih * g.W + lo * g.sw + off, hi - lo, g.sw)
            dw[i * g.kw + j] = <floating> s


cdef bint _is_dw3(const Plane* g) noexcept nogil:
    """A 3x3 undilated kernel of stride 1 or 2 (the same in both directions): the plane
    kernels of csrc/cnncore_direct.h."""
    return (g.kh == 3 and g.kw == 3 and g.sh == g.sw and (g.sh == 1 or g.sh == 2)
            and g.dh == 1 and g.dw == 1)


cdef Plane _plane(Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh,
                  Py_ssize_t kw, int sh, int sw, int ph, int pw, int dh, int dw):
    cdef Plane g
    g.H, g.W, g.Ho, g.Wo, g.kh, g.kw = H, W, Ho, Wo, kh, kw
    g.sh, g.sw, g.ph, g.pw, g.dh, g.dw = sh, sw, ph, pw, dh, dw
    return g


def forward(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
            const floating[:, :, :, ::1] w,     # IN  (C_out, 1, kh, kw)
            const floating[::1] bias,           # IN  (C_out,) or (0,)
            floating[:, :, :, ::1] y,           # OUT (N, C_out, Ho, Wo)
            int sh, int sw, int ph, int pw, int dh, int dw, int n_threads):
    cdef Plane g = _plane(x.shape[2], x.shape[3], y.shape[2], y.shape[3], w.shape[2],
                          w.shape[3], sh, sw, ph, pw, dh, dw)
    cdef Py_ssize_t C_out = w.shape[0], og = w.shape[0] // x.shape[1]
    cdef bint has_bias = bias.shape[0] > 0
    cdef Py_ssize_t C = x.shape[1], t, n, c, o, k
    cdef floating* xp
    cdef floating[:, ::1] pad
    if _is_dw3(&g):
        # one task per (image, input channel): its plane padded once for its og outputs
        pad = np.empty((n_threads, _dw3_pad_size(g.Ho, g.Wo, g.sh)), dtype=np.asarray(x).dtype)
        for t in prange(x.shape[0] * C, nogil=True, schedule='static', num_threads=n_threads):
            n = t // C
            c = t % C
            xp = &pad[threadid(), 0]
            _dw3_pad(xp, &x[n, c, 0, 0], g.H, g.W, g.Ho, g.Wo, g.ph, g.pw, g.sh)
            for k in range(og):
                o = c * og + k
                _dw3_plane(&y[n, o, 0, 0], xp, &w[o, 0, 0, 0], bias[o] if has_bias else 0,
                           0, g.Ho, g.Wo, g.sh)
        return
    for t in prange(x.shape[0] * C_out, nogil=True, schedule='static', num_threads=n_threads):
        n = t // C_out
        o = t % C_out
        _forward_plane(&g, &x[n, o // og, 0, 0], &w[o, 0, 0, 0],
                       bias[o] if has_bias else 0, &y[n, o, 0, 0])


def backward(const floating[:, :, :, ::1] dy,   # IN  (N, C_out, Ho, Wo)
             const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
             const floating[:, :, :, ::1] w,    # IN  (C_out, 1, kh, kw)
             floating[:, :, :, ::1] dx,         # OUT (N, C, H, W)
             floating[:, :, :, ::1] dw,         # OUT (C_out, 1, kh, kw)
             int sh, int sw, int ph, int pw, int dh, int dw_, bint need_dx, int n_threads):
    """Weight gradient into ``dw`` and, if ``need_dx``, input gradient into ``dx``."""
    cdef Plane g = _plane(x.shape[2], x.shape[3], dy.shape[2], dy.shape[3], w.shape[2],
                          w.shape[3], sh, sw, ph, pw, dh, dw_)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], C_out = w.shape[0]
    cdef Py_ssize_t og = C_out // C, P = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t t, n, c, o
    if _is_dw3(&g):
        _dw3_backward(&g, dy, x, w, dx, dw, need_dx, n_threads)
        return
    for t in prange(N * C if need_dx else 0, nogil=True, schedule='static',
                    num_threads=n_threads):
        n = t // C
        c = t % C
        _backward_input_plane(&g, &dy[n, c * og, 0, 0], &w[c * og, 0, 0, 0], og, P,
                              &dx[n, c, 0, 0])
    for o in prange(C_out, nogil=True, schedule='static', num_threads=n_threads):
        _backward_weight_channel(&g, &dy[0, o, 0, 0], &x[0, o // og, 0, 0], N, C_out * P,
                                 C * g.H * g.W, &dw[o, 0, 0, 0])


cdef void _dw3_backward(const Plane* g, const floating[:, :, :, ::1] dy,
                        const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                        floating[:, :, :, ::1] dx, floating[:, :, :, ::1] dw, bint need_dx,
                        int n_threads):
    """backward() for 3x3 kernels of stride 1 or 2: one task per (image, input channel)
    plane does its dx plane and the nine weight-gradient sums of its output channels
    (``part``, per image); then each channel adds its ``part`` rows over the batch in
    order."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], C_out = w.shape[0], og = C_out // C
    cdef Py_ssize_t t, n, c, o, k
    cdef double s
    cdef floating* xp
    cdef floating* gp
    # dx = dy padded by 2 - p, correlated with the flipped kernel
    cdef floating[:, ::1] w_flip = np.ascontiguousarray(
        np.asarray(w).reshape(C_out, 9)[:, ::-1])
    cdef double[:, :, ::1] part = np.empty((N, C_out, 9), dtype=np.float64)
    # per thread: the padded x plane, then the padded dy plane (stride 2: and the even and
    # odd columns of a dx row)
    cdef Py_ssize_t x_size = _dw3_pad_size(g.Ho, g.Wo, g.sh)
    cdef Py_ssize_t dy_size = (_dw3_pad_size(g.H, g.W, 1) if g.sh == 1 else
                               _dw3_pad_size(g.Ho, g.Wo, 1) + 2 * (g.W // 2 + g.pw // 2 + 2))
    cdef floating[:, ::1] pad = np.empty((n_threads, x_size + dy_size),
                                         dtype=np.asarray(x).dtype)
    for t in prange(N * C, nogil=True, schedule='static', num_threads=n_threads):
        n = t // C
        c = t % C
        xp = &pad[threadid(), 0]
        gp = xp + x_size
        _dw3_pad(xp, &x[n, c, 0, 0], g.H, g.W, g.Ho, g.Wo, g.ph, g.pw, g.sh)
        for k in range(og):
            o = c * og + k
            _dw3_wgrad_plane(&part[n, o, 0], &dy[n, o, 0, 0], xp, g.Ho, g.Wo, g.sh)
            if not need_dx:
                continue
            if g.sh == 1:
                _dw3_pad(gp, &dy[n, o, 0, 0], g.Ho, g.Wo, g.H, g.W, 2 - g.ph, 2 - g.pw, 1)
                _dw3_plane(&dx[n, c, 0, 0], gp, &w_flip[o, 0], 0, k > 0, g.H, g.W, 1)
            else:
                _dw3_pad(gp, &dy[n, o, 0, 0], g.Ho, g.Wo, g.Ho, g.Wo, 1, 1, 1)
                _dw3_dx_s2(&dx[n, c, 0, 0], gp, &w[o, 0, 0, 0], k > 0, g.H, g.W, g.Ho, g.Wo,
                           g.ph, g.pw, gp + _dw3_pad_size(g.Ho, g.Wo, 1))
    for o in prange(C_out, nogil=True, schedule='static', num_threads=n_threads):
        for k in range(9):
            s = 0
            for n in range(N):
                s = s + part[n, o, k]
            dw[o, 0, k // 3, k % 3] = <floating> s

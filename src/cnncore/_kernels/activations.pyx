"""Element-wise activations, row-wise softmax and losses.

Inputs are flat (activations) or 2-D (rows x features) C-contiguous arrays. Element-wise
kernels split the flat index range statically over threads; row kernels one row per task.
Transcendentals are evaluated in double precision for both dtypes.
"""
from libc.math cimport exp, log, tanh as c_tanh
from libc.stdint cimport int64_t
from cython cimport floating
from cython.parallel cimport prange

from cnncore._kernels._simd cimport (cnn_relu_f, cnn_relu_d, cnn_leaky_relu_f, cnn_leaky_relu_d, cnn_relu_backward_f,
                                     cnn_relu_backward_d, cnn_leaky_relu_backward_f,
                                     cnn_leaky_relu_backward_d)


cdef inline double _sigmoid(double v) noexcept nogil:
    # Two branches so that exp() never overflows: 1/(1+e^-v) for v >= 0, e^v/(1+e^v) else.
    cdef double e
    if v >= 0:
        return 1.0 / (1.0 + exp(-v))
    e = exp(v)
    return e / (1.0 + e)


cdef enum:
    BLOCK = 4096  # elements per task of the vectorised ReLU kernels


cdef inline Py_ssize_t _block_len(Py_ssize_t blk, Py_ssize_t n) noexcept nogil:
    return BLOCK if (blk + 1) * BLOCK <= n else n - blk * BLOCK


cdef inline void _leaky(floating* y, const floating* x, Py_ssize_t n,
                        floating slope, bint plain) noexcept nogil:
    if floating is float:
        if plain:
            cnn_relu_f(y, x, n)
        else:
            cnn_leaky_relu_f(y, x, n, slope)
    else:
        if plain:
            cnn_relu_d(y, x, n)
        else:
            cnn_leaky_relu_d(y, x, n, slope)


cdef inline void _leaky_backward(floating* dx, const floating* dy, const floating* x,
                                 Py_ssize_t n, floating slope, bint plain) noexcept nogil:
    if floating is float:
        if plain:
            cnn_relu_backward_f(dx, dy, x, n)
        else:
            cnn_leaky_relu_backward_f(dx, dy, x, n, slope)
    else:
        if plain:
            cnn_relu_backward_d(dx, dy, x, n)
        else:
            cnn_leaky_relu_backward_d(dx, dy, x, n, slope)


def leaky_relu_forward(const floating[::1] x, floating[::1] y, double slope, bint plain,
                       int n_threads):
    """``y = x if x > 0 else slope * x``; ``plain`` is ReLU (``max(x, 0)``: exactly 0 even
    for x = -inf, where a slope of 0 gives ``0 * -inf = nan``, as NumPy and PyTorch do)."""
    cdef Py_ssize_t blk, n = x.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule='static',
                      num_threads=n_threads):
        _leaky(&y[blk * BLOCK], &x[blk * BLOCK], _block_len(blk, n), <floating> slope, plain)


def leaky_relu_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                        double slope, bint plain, int n_threads):
    """``dx = dy if x > 0 else slope * dy``; ``plain`` is ReLU's gradient (exactly 0 where
    ``x <= 0``, even for dy = inf; a slope of 0 gives ``0 * inf = nan`` there)."""
    cdef Py_ssize_t blk, n = x.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule='static',
                      num_threads=n_threads):
        _leaky_backward(&dx[blk * BLOCK], &dy[blk * BLOCK], &x[blk * BLOCK],
                        _block_len(blk, n), <floating> slope, plain)


def sigmoid_forward(const floating[::1] x, floating[::1] y, int n_threads):
    cdef Py_ssize_t i
    for i in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        y[i] = <floating> _sigmoid(x[i])


def sigmoid_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                     int n_threads):
    """``dx = dy * s * (1 - s)`` with ``s = sigmoid(x)``."""
    cdef Py_ssize_t i
    cdef double s
    for i in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        s = _sigmoid(x[i])
        dx[i] = <floating> (dy[i] * s * (1.0 - s))


def tanh_forward(const floating[::1] x, floating[::1] y, int n_threads):
    cdef Py_ssize_t i
    for i in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        y[i] = <floating> c_tanh(x[i])


def tanh_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                  int n_threads):
    """``dx = dy * (1 - tanh(x)^2)``."""
    cdef Py_ssize_t i
    cdef double t
    for i in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        t = c_tanh(x[i])
        dx[i] = <floating> (dy[i] * (1.0 - t * t))


cdef double _log_sum_exp(const floating* z, Py_ssize_t K, double* zmax) noexcept nogil:
    """``log sum_k exp(z_k - max)``; the maximum is returned through ``zmax``."""
    cdef Py_ssize_t k
    cdef double m = z[0], s = 0
    for k in range(1, K):
        if z[k] > m:
            m = z[k]
    for k in range(K):
        s = s + exp(z[k] - m)
    zmax[0] = m
    return log(s)


cdef void _softmax_row(const floating* z, floating* p, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t k
    cdef double m, lse = _log_sum_exp(z, K, &m)
    for k in range(K):
        p[k] = <floating> exp(z[k] - m - lse)


def softmax_rows(const floating[:, ::1] z, floating[:, ::1] p, int n_threads):
    """Softmax of every row, shifted by the row maximum."""
    cdef Py_ssize_t r
    for r in prange(z.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        _softmax_row(&z[r, 0], &p[r, 0], z.shape[1])


cdef double _xent_row_index(const floating* z, int64_t label, floating* g, Py_ssize_t K,
                            double scale) noexcept nogil:
    """Row loss ``lse(z) - z[label]``; ``g = (softmax(z) - onehot) * scale``."""
    cdef Py_ssize_t k
    cdef double m, lse = _log_sum_exp(z, K, &m)
    for k in range(K):
        g[k] = <floating> (exp(z[k] - m - lse) * scale)
    g[label] = <floating> ((exp(z[label] - m - lse) - 1.0) * scale)
    return lse + m - z[label]


cdef double _xent_row_dense(const floating* z, const floating* t, floating* g, Py_ssize_t K,
                            double scale) noexcept nogil:
    """Row loss ``sum_k t_k (lse(z) - z_k)``; ``g = (softmax(z) * sum(t) - t) * scale``
    (the exact gradient, which is ``softmax - t`` when the targets sum to one)."""
    cdef Py_ssize_t k
    cdef double m, lse = _log_sum_exp(z, K, &m), loss = 0, tsum = 0
    for k in range(K):
        loss = loss + t[k] * (lse + m - z[k])
        tsum = tsum + t[k]
    for k in range(K):
        g[k] = <floating> ((exp(z[k] - m - lse) * tsum - t[k]) * scale)
    return loss


def softmax_xent_index(const floating[:, ::1] z,    # IN  (N, K) logits
                       const int64_t[::1] labels,    # IN  (N,) class indices
                       floating[:, ::1] g,           # OUT (N, K) gradient of the mean loss
                       double[::1] row_loss,         # OUT (N,)
                       int n_threads):
    cdef Py_ssize_t r
    cdef double scale = 1.0 / z.shape[0]
    for r in prange(z.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        row_loss[r] = _xent_row_index(&z[r, 0], labels[r], &g[r, 0], z.shape[1], scale)


def softmax_xent_dense(const floating[:, ::1] z,    # IN  (N, K) logits
                       const floating[:, ::1] t,    # IN  (N, K) target distributions
                       floating[:, ::1] g,          # OUT (N, K)
                       double[::1] row_loss,        # OUT (N,)
                       int n_threads):
    cdef Py_ssize_t r
    cdef double scale = 1.0 / z.shape[0]
    for r in prange(z.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        row_loss[r] = _xent_row_dense(&z[r, 0], &t[r, 0], &g[r, 0], z.shape[1], scale)


cdef double _mse_row(const floating* a, const floating* b, floating* g, Py_ssize_t F,
                     double scale) noexcept nogil:
    cdef Py_ssize_t f
    cdef double d, s = 0
    for f in range(F):
        d = <double> a[f] - <double> b[f]
        s = s + d * d
        g[f] = <floating> (d * scale)
    return s


def mse_rows(const floating[:, ::1] pred,     # IN  (N, F)
             const floating[:, ::1] target,   # IN  (N, F)
             floating[:, ::1] g,              # OUT (N, F) = (pred - target) / N
             double[::1] row_sq,              # OUT (N,) squared error of each row
             int n_threads):
    cdef Py_ssize_t r
    cdef double scale = 1.0 / pred.shape[0]
    for r in prange(pred.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        row_sq[r] = _mse_row(&pred[r, 0], &target[r, 0], &g[r, 0], pred.shape[1], scale)


def ordered_sum(const double[::1] v):
    """Sum in index order (the batch reductions of the losses; thread-count independent)."""
    cdef Py_ssize_t i
    cdef double s = 0
    for i in range(v.shape[0]):
        s += v[i]
    return s

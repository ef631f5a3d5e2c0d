# cython: boundscheck=False, wraparound=False
"""Batch normalisation forward (training and eval) and backward, and the fused inference
epilogues (add + ReLU, in-place ReLU).

Activations are viewed as ``(N, C, S)`` (``S`` = the product of the spatial sizes, 1 for
``(N, C)``). The BatchNorm kernels run one task per channel (``prange`` over ``C``, static
schedule): a channel's statistics are reduced by one thread in a fixed order (double lanes,
see csrc/cnncore_norm.h), so every result is bit-identical at any thread count. A task
reduces its channel and then writes it at once, while the channel's slab is still in cache.

Statistics: one pass of shifted sums. With ``K`` the channel's first value,
``mean = K + sum(x - K) / M`` and ``var = sum((x - K)^2) / M - (sum(x - K) / M)^2`` in double.
The plain one-pass formula ``E[x^2] - E[x]^2`` loses ``log10(mean^2 / var)`` digits; the shift
(a value of the channel, so within a few standard deviations of its mean) removes the
cancellation, and costs one pass over memory less than the two-pass mean-then-centred-sum.
"""
from libc.math cimport sqrt
from cython cimport floating
from cython.parallel cimport prange


cdef extern from "cnncore_norm.h" nogil:
    void cnn_bn_stats_f(const float* x, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t len,
                        double shift, double* sum, double* sumsq)
    void cnn_bn_stats_d(const double* x, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t len,
                        double shift, double* sum, double* sumsq)
    void cnn_bn_grad_sums_f(const float* dy, const float* x, Py_ssize_t n, Py_ssize_t stride,
                            Py_ssize_t len, double mean, double* sum_dy, double* sum_dy_xc)
    void cnn_bn_grad_sums_d(const double* dy, const double* x, Py_ssize_t n,
                            Py_ssize_t stride, Py_ssize_t len, double mean, double* sum_dy,
                            double* sum_dy_xc)
    void cnn_bn_apply_f(float* y, const float* x, Py_ssize_t n, Py_ssize_t stride,
                        Py_ssize_t len, float mean, float scale, float shift, int relu)
    void cnn_bn_apply_d(double* y, const double* x, Py_ssize_t n, Py_ssize_t stride,
                        Py_ssize_t len, double mean, double scale, double shift, int relu)
    void cnn_bn_backward_apply_f(float* dx, const float* dy, const float* x, Py_ssize_t n,
                                 Py_ssize_t stride, Py_ssize_t len, float mean, float k1,
                                 float k2, float k3)
    void cnn_bn_backward_apply_d(double* dx, const double* dy, const double* x, Py_ssize_t n,
                                 Py_ssize_t stride, Py_ssize_t len, double mean, double k1,
                                 double k2, double k3)
    void cnn_bn_backward_eval_f(float* dx, const float* dy, const float* x, Py_ssize_t n,
                                Py_ssize_t stride, Py_ssize_t len, double mean, float k1,
                                double* sum_dy, double* sum_dy_xc)
    void cnn_bn_backward_eval_d(double* dx, const double* dy, const double* x, Py_ssize_t n,
                                Py_ssize_t stride, Py_ssize_t len, double mean, double k1,
                                double* sum_dy, double* sum_dy_xc)
    void cnn_add_relu_f(float* out, const float* a, const float* b, Py_ssize_t n)
    void cnn_add_relu_d(double* out, const double* a, const double* b, Py_ssize_t n)
    void cnn_relu_inplace_f(float* x, Py_ssize_t n)
    void cnn_relu_inplace_d(double* x, Py_ssize_t n)


cdef enum:
    BLOCK = 16384  # elements per task of the element-wise epilogues


# ------------------------------------------------------------------------ per-channel bodies
cdef void _stats(const floating* x, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t len,
                 double shift, double* s, double* q) noexcept nogil:
    if floating is float:
        cnn_bn_stats_f(x, n, stride, len, shift, s, q)
    else:
        cnn_bn_stats_d(x, n, stride, len, shift, s, q)


cdef void _apply(floating* y, const floating* x, Py_ssize_t n, Py_ssize_t stride,
                 Py_ssize_t len, floating mean, floating scale, floating shift,
                 int relu) noexcept nogil:
    if floating is float:
        cnn_bn_apply_f(y, x, n, stride, len, mean, scale, shift, relu)
    else:
        cnn_bn_apply_d(y, x, n, stride, len, mean, scale, shift, relu)


cdef void _train_channel(const floating* x,     # IN  channel c of (N, C, S)
                         floating* y,           # OUT channel c of y
                         Py_ssize_t n, Py_ssize_t stride, Py_ssize_t len,
                         floating gamma, floating beta, double eps,
                         double* mean_d,        # OUT batch mean (double)
                         double* var_d,         # OUT biased batch variance (double)
                         floating* mean_t,      # OUT mean rounded to the dtype
                         floating* inv_std_t    # OUT 1 / sqrt(var + eps) in the dtype
                         ) noexcept nogil:
    cdef double s, q, m = <double> n * len
    cdef double shift = x[0]
    cdef double d, var
    _stats(x, n, stride, len, shift, &s, &q)
    d = s / m
    var = q / m - d * d
    if var < 0:
        var = 0
    mean_d[0] = shift + d
    var_d[0] = var
    mean_t[0] = <floating> (shift + d)
    inv_std_t[0] = <floating> (1.0 / sqrt(var + eps))
    _apply(y, x, n, stride, len, mean_t[0], <floating> (gamma * inv_std_t[0]), beta, 0)


cdef void _backward_channel(const floating* dy, const floating* x, floating* dx,
                            Py_ssize_t n, Py_ssize_t stride, Py_ssize_t len,
                            floating mean, floating inv_std, floating gamma, bint training,
                            floating* g_gamma,   # OUT
                            floating* g_beta     # OUT
                            ) noexcept nogil:
    cdef double sum_dy, sum_dy_xc, gg, m = <double> n * len
    cdef double k1 = <double> gamma * inv_std
    if training:
        if floating is float:
            cnn_bn_grad_sums_f(dy, x, n, stride, len, mean, &sum_dy, &sum_dy_xc)
        else:
            cnn_bn_grad_sums_d(dy, x, n, stride, len, mean, &sum_dy, &sum_dy_xc)
        gg = sum_dy_xc * inv_std
        # dx = k1 * (dy - sum_dy / M - x_hat * g_gamma / M), x_hat = (x - mean) * inv_std
        if floating is float:
            cnn_bn_backward_apply_f(dx, dy, x, n, stride, len, mean, <float> k1,
                                    <float> (-k1 * inv_std * gg / m),
                                    <float> (-k1 * sum_dy / m))
        else:
            cnn_bn_backward_apply_d(dx, dy, x, n, stride, len, mean, k1,
                                    -k1 * inv_std * gg / m, -k1 * sum_dy / m)
    else:
        if floating is float:
            cnn_bn_backward_eval_f(dx, dy, x, n, stride, len, mean, <float> k1, &sum_dy,
                                   &sum_dy_xc)
        else:
            cnn_bn_backward_eval_d(dx, dy, x, n, stride, len, mean, k1, &sum_dy, &sum_dy_xc)
        gg = sum_dy_xc * inv_std
    g_gamma[0] = <floating> gg
    g_beta[0] = <floating> sum_dy


# ------------------------------------------------------------------------ entry points
def batch_norm_train(const floating[:, :, ::1] x, const floating[::1] gamma,
                     const floating[::1] beta,
                     floating[:, :, ::1] y,        # OUT normalised, scaled and shifted
                     double[::1] mean_d,           # OUT batch mean
                     double[::1] var_d,            # OUT biased batch variance
                     floating[::1] mean_t,         # OUT batch mean in the dtype
                     floating[::1] inv_std_t,      # OUT 1 / sqrt(var + eps) in the dtype
                     double eps, int n_threads):
    """Training-mode forward: batch statistics and ``y``, one task per channel. Needs
    ``N * S >= 1``."""
    cdef Py_ssize_t c, n = x.shape[0], C = x.shape[1], S = x.shape[2]
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        _train_channel(&x[0, c, 0], &y[0, c, 0], n, C * S, S, gamma[c], beta[c], eps,
                       &mean_d[c], &var_d[c], &mean_t[c], &inv_std_t[c])


def batch_norm_apply(const floating[:, :, ::1] x, const floating[::1] mean,
                     const floating[::1] scale, const floating[::1] shift,
                     floating[:, :, ::1] y, bint relu, int n_threads):
    """``y = (x - mean[c]) * scale[c] + shift[c]`` (then ``max(y, 0)`` if ``relu``): eval
    mode with ``scale = gamma * inv_std`` and ``shift = beta``. Needs ``N * S >= 1``."""
    cdef Py_ssize_t r, i, c, n = x.shape[0], C = x.shape[1], S = x.shape[2]
    if S < 256:  # short rows: a task per channel (a call per 16-pixel row costs 2x at 4x4)
        for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
            _apply(&y[0, c, 0], &x[0, c, 0], n, C * S, S, mean[c], scale[c], shift[c], relu)
        return
    # Rows (sample, channel) in memory order: each thread streams one contiguous part of x
    # and y (by channel, every task would hop between samples: 2x slower on (16, 256, 32, 32)).
    for r in prange(n * C, nogil=True, schedule='static', num_threads=n_threads):
        i = r // C
        c = r % C
        _apply(&y[i, c, 0], &x[i, c, 0], 1, S, S, mean[c], scale[c], shift[c], relu)


def batch_norm_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                        const floating[::1] mean, const floating[::1] inv_std,
                        const floating[::1] gamma, bint training,
                        floating[:, :, ::1] dx,       # OUT
                        floating[::1] g_gamma,        # OUT
                        floating[::1] g_beta,         # OUT
                        int n_threads):
    """Gradients with ``x_hat`` recomputed from ``x``, ``mean`` and ``inv_std``: one reduction
    pass and one write pass per channel in training mode, a single pass in eval mode."""
    cdef Py_ssize_t c, n = x.shape[0], C = x.shape[1], S = x.shape[2]
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        _backward_channel(&dy[0, c, 0], &x[0, c, 0], &dx[0, c, 0], n, C * S, S, mean[c],
                          inv_std[c], gamma[c], training, &g_gamma[c], &g_beta[c])


cdef inline Py_ssize_t _block_len(Py_ssize_t blk, Py_ssize_t n) noexcept nogil:
    return BLOCK if (blk + 1) * BLOCK <= n else n - blk * BLOCK


def add_relu(const floating[::1] a, const floating[::1] b, floating[::1] out, int n_threads):
    """``out = max(a + b, 0)``; ``out`` may be ``a`` or ``b``."""
    cdef Py_ssize_t blk, n = a.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule='static',
                      num_threads=n_threads):
        if floating is float:
            cnn_add_relu_f(&out[blk * BLOCK], &a[blk * BLOCK], &b[blk * BLOCK],
                           _block_len(blk, n))
        else:
            cnn_add_relu_d(&out[blk * BLOCK], &a[blk * BLOCK], &b[blk * BLOCK],
                           _block_len(blk, n))


def relu_inplace(floating[::1] x, int n_threads):
    """``x = max(x, 0)`` in place."""
    cdef Py_ssize_t blk, n = x.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule='static',
                      num_threads=n_threads):
        if floating is float:
            cnn_relu_inplace_f(&x[blk * BLOCK], _block_len(blk, n))
        else:
            cnn_relu_inplace_d(&x[blk * BLOCK], _block_len(blk, n))

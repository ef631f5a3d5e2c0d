# cython: boundscheck=False, wraparound=False, cdivision=True
"""Local response normalisation across channels (AlexNet's LRN, PyTorch's formula), forward
and backward.

``x`` is ``(N, C, S)`` with ``S`` the product of the spatial sizes, C-contiguous. With
``D_c = k + alpha / size * sum_{c' in W(c)} x_c'^2`` over the window
``W(c) = [c - size//2, c + (size-1)//2]`` (channels outside ``[0, C)`` count as zeros):

- forward: ``y_c = x_c * D_c^-beta``;
- backward: ``gx_j = g_j D_j^-beta - (2 alpha beta / size) x_j
  sum_{c : j in W(c)} g_c x_c D_c^(-beta-1)``.

Tasks are (sample, block of ``BLOCK`` pixels): every channel of a block is done by one
task, the window sums and powers in double precision, element by element, so the results
do not depend on the thread count. ``beta = 0.75`` (AlexNet's) takes
``D^-0.75 = 1 / (sqrt(D) sqrt(sqrt(D)))`` instead of ``pow``.
"""
from libc.math cimport pow, sqrt
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

cdef enum:
    BLOCK = 128  # pixels per task


cdef inline double _neg_pow(double d, double beta, bint three_quarters) noexcept nogil:
    """``d ** -beta``."""
    cdef double r
    if three_quarters:
        r = sqrt(d)
        return 1.0 / (r * sqrt(r))
    return pow(d, -beta)


cdef void _denominators(const floating* x, Py_ssize_t C, Py_ssize_t S, Py_ssize_t c,
                        Py_ssize_t s0, Py_ssize_t nb, Py_ssize_t before, Py_ssize_t after,
                        double scale, double k, double* d) noexcept nogil:
    """``d[i] = k + scale * sum_{j in W(c)} x[j, s0 + i]^2`` for ``i < nb`` (``x`` one
    sample)."""
    cdef Py_ssize_t i, j
    cdef Py_ssize_t lo = c - before if c - before > 0 else 0
    cdef Py_ssize_t hi = c + after if c + after < C - 1 else C - 1
    cdef const floating* row
    cdef double v
    for i in range(nb):
        d[i] = 0.0
    for j in range(lo, hi + 1):
        row = x + j * S + s0
        for i in range(nb):
            v = row[i]
            d[i] += v * v
    for i in range(nb):
        d[i] = k + scale * d[i]


cdef void _forward_task(const floating* x, floating* y, Py_ssize_t C, Py_ssize_t S,
                        Py_ssize_t s0, Py_ssize_t nb, Py_ssize_t before, Py_ssize_t after,
                        double scale, double k, double beta, bint tq) noexcept nogil:
    """One (sample, block of pixels) task of :func:`lrn_forward` (``x``, ``y``: one sample;
    the window sums live in this call's own stack array)."""
    cdef double d[BLOCK]
    cdef Py_ssize_t c, i
    for c in range(C):
        _denominators(x, C, S, c, s0, nb, before, after, scale, k, d)
        for i in range(nb):
            y[c * S + s0 + i] = <floating> (x[c * S + s0 + i] * _neg_pow(d[i], beta, tq))


def lrn_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, Py_ssize_t size,
                double alpha, double beta, double k, int n_threads):
    """``y = x * D^-beta`` (see the module docstring)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t nblk = (S + BLOCK - 1) // BLOCK, task, n, s0
    cdef Py_ssize_t before = size // 2, after = (size - 1) // 2
    for task in prange(N * nblk, nogil=True, schedule='static', num_threads=n_threads):
        n = task // nblk
        s0 = (task % nblk) * BLOCK
        _forward_task(&x[n, 0, 0], &y[n, 0, 0], C, S, s0,
                      S - s0 if S - s0 < BLOCK else BLOCK, before, after, alpha / size, k,
                      beta, beta == 0.75)


cdef void _backward_task(const floating* g, const floating* x, floating* gx, Py_ssize_t C,
                         Py_ssize_t S, Py_ssize_t s0, Py_ssize_t nb, Py_ssize_t before,
                         Py_ssize_t after, double scale, double coef, double k, double beta,
                         bint tq, double* dpow, double* t) noexcept nogil:
    """One (sample, block of pixels) task of :func:`lrn_backward` (``g``, ``x``, ``gx``: one
    sample; ``dpow``, ``t``: the thread's ``C * BLOCK`` scratch each)."""
    cdef double d[BLOCK]
    cdef double back[BLOCK]
    cdef Py_ssize_t c, i, j, lo, hi
    cdef double dv, p
    for c in range(C):
        _denominators(x, C, S, c, s0, nb, before, after, scale, k, d)
        for i in range(nb):
            dv = d[i]
            p = _neg_pow(dv, beta, tq)
            dpow[c * BLOCK + i] = p
            t[c * BLOCK + i] = (<double> g[c * S + s0 + i]) * x[c * S + s0 + i] * p / dv
    for j in range(C):  # j is in W(c) when c is in [j - after, j + before]
        lo = j - after if j - after > 0 else 0
        hi = j + before if j + before < C - 1 else C - 1
        for i in range(nb):
            back[i] = 0.0
        for c in range(lo, hi + 1):
            for i in range(nb):
                back[i] += t[c * BLOCK + i]
        for i in range(nb):
            gx[j * S + s0 + i] = <floating> ((<double> g[j * S + s0 + i]) * dpow[j * BLOCK + i]
                                             - coef * x[j * S + s0 + i] * back[i])


def lrn_backward(const floating[:, :, ::1] g, const floating[:, :, ::1] x,
                 floating[:, :, ::1] gx, double[:, ::1] work, Py_ssize_t size, double alpha,
                 double beta, double k, int n_threads):
    """``gx`` of :func:`lrn_forward` (see the module docstring); ``work`` is per-thread
    scratch, ``(n_threads, 2 * C * block())`` doubles: ``D_c^-beta`` and
    ``t_c = g_c x_c D_c^(-beta-1)`` of a block."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t nblk = (S + BLOCK - 1) // BLOCK, task, n, s0
    cdef Py_ssize_t before = size // 2, after = (size - 1) // 2
    cdef double* dpow = NULL
    if work.shape[0] < n_threads or work.shape[1] < 2 * C * BLOCK:
        raise ValueError(f"lrn_backward: work must be at least ({n_threads}, {2 * C * BLOCK})")
    with nogil, parallel(num_threads=n_threads):
        dpow = &work[threadid(), 0]
        for task in prange(N * nblk, schedule='static'):
            n = task // nblk
            s0 = (task % nblk) * BLOCK
            _backward_task(&g[n, 0, 0], &x[n, 0, 0], &gx[n, 0, 0], C, S, s0,
                           S - s0 if S - s0 < BLOCK else BLOCK, before, after, alpha / size,
                           2.0 * alpha * beta / size, k, beta, beta == 0.75, dpow,
                           dpow + C * BLOCK)


def block():
    """Pixels per task (the scratch of :func:`lrn_backward` is ``2 * C * block()`` doubles
    per thread)."""
    return BLOCK

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
do not depend on the thread count. The work of a task is C (``csrc/cnncore_lrn.h``),
vectorised along the pixels for this machine's instruction set.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid

cdef extern from "cnncore_lrn.h" nogil:
    int cnn_cr_isa()
    enum: CNN_LRN_BLOCK
    void cnn_lrn_forward_f(int isa, const float* x, float* y, Py_ssize_t C, Py_ssize_t S,
                           Py_ssize_t nb, Py_ssize_t before, Py_ssize_t after, double scale,
                           double k, double beta, int tq)
    void cnn_lrn_forward_d(int isa, const double* x, double* y, Py_ssize_t C, Py_ssize_t S,
                           Py_ssize_t nb, Py_ssize_t before, Py_ssize_t after, double scale,
                           double k, double beta, int tq)
    void cnn_lrn_backward_f(int isa, const float* g, const float* x, float* gx, Py_ssize_t C,
                            Py_ssize_t S, Py_ssize_t nb, Py_ssize_t before, Py_ssize_t after,
                            double scale, double coef, double k, double beta, int tq,
                            double* dpow, double* t)
    void cnn_lrn_backward_d(int isa, const double* g, const double* x, double* gx,
                            Py_ssize_t C, Py_ssize_t S, Py_ssize_t nb, Py_ssize_t before,
                            Py_ssize_t after, double scale, double coef, double k, double beta,
                            int tq, double* dpow, double* t)

cdef enum:
    BLOCK = CNN_LRN_BLOCK  # pixels per task

cdef int _ISA = cnn_cr_isa()
ISA = _ISA  # 2: AVX-512F, 1: AVX2 + FMA, 0: baseline


cdef int _isa(int isa) except -1:
    """``isa`` if it is a level this machine runs (0 to ISA), ISA for -1."""
    if isa == -1:
        return _ISA
    if not 0 <= isa <= _ISA:
        raise ValueError(f"lrn: isa must be -1 or in [0, {_ISA}], got {isa}")
    return isa


cdef inline void _forward_task(int isa, const floating* x, floating* y, Py_ssize_t C,
                               Py_ssize_t S, Py_ssize_t nb, Py_ssize_t before,
                               Py_ssize_t after, double scale, double k, double beta,
                               bint tq) noexcept nogil:
    if floating is float:
        cnn_lrn_forward_f(isa, x, y, C, S, nb, before, after, scale, k, beta, tq)
    else:
        cnn_lrn_forward_d(isa, x, y, C, S, nb, before, after, scale, k, beta, tq)


cdef inline void _backward_task(int isa, const floating* g, const floating* x, floating* gx,
                                Py_ssize_t C, Py_ssize_t S, Py_ssize_t nb, Py_ssize_t before,
                                Py_ssize_t after, double scale, double coef, double k,
                                double beta, bint tq, double* dpow,
                                double* t) noexcept nogil:
    if floating is float:
        cnn_lrn_backward_f(isa, g, x, gx, C, S, nb, before, after, scale, coef, k, beta, tq,
                           dpow, t)
    else:
        cnn_lrn_backward_d(isa, g, x, gx, C, S, nb, before, after, scale, coef, k, beta, tq,
                           dpow, t)


def lrn_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, Py_ssize_t size,
                double alpha, double beta, double k, int n_threads, int isa=-1):
    """``y = x * D^-beta`` (see the module docstring); ``isa``: the instruction-set level
    of the task kernel (-1: this machine's best, ``ISA``; lower levels for the tests)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t nblk = (S + BLOCK - 1) // BLOCK, task, n, s0
    cdef Py_ssize_t before = size // 2, after = (size - 1) // 2
    isa = _isa(isa)
    for task in prange(N * nblk, nogil=True, schedule='static', num_threads=n_threads):
        n = task // nblk
        s0 = (task % nblk) * BLOCK
        _forward_task(isa, &x[n, 0, s0], &y[n, 0, s0], C, S,
                      S - s0 if S - s0 < BLOCK else BLOCK, before, after, alpha / size, k,
                      beta, beta == 0.75)


def lrn_backward(const floating[:, :, ::1] g, const floating[:, :, ::1] x,
                 floating[:, :, ::1] gx, double[:, ::1] work, Py_ssize_t size, double alpha,
                 double beta, double k, int n_threads, int isa=-1):
    """``gx`` of :func:`lrn_forward` (see the module docstring); ``work`` is per-thread
    scratch, ``(n_threads, 2 * C * block())`` doubles: ``D_c^-beta`` and
    ``t_c = g_c x_c D_c^(-beta-1)`` of a block; ``isa`` as in :func:`lrn_forward`."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t nblk = (S + BLOCK - 1) // BLOCK, task, n, s0
    cdef Py_ssize_t before = size // 2, after = (size - 1) // 2
    cdef double* dpow = NULL
    if work.shape[0] < n_threads or work.shape[1] < 2 * C * BLOCK:
        raise ValueError(f"lrn_backward: work must be at least ({n_threads}, {2 * C * BLOCK})")
    isa = _isa(isa)
    with nogil, parallel(num_threads=n_threads):
        dpow = &work[threadid(), 0]
        for task in prange(N * nblk, schedule='static'):
            n = task // nblk
            s0 = (task % nblk) * BLOCK
            _backward_task(isa, &g[n, 0, s0], &x[n, 0, s0], &gx[n, 0, s0], C, S,
                           S - s0 if S - s0 < BLOCK else BLOCK, before, after, alpha / size,
                           2.0 * alpha * beta / size, k, beta, beta == 0.75, dpow,
                           dpow + C * BLOCK)


def block():
    """Pixels per task (the scratch of :func:`lrn_backward` is ``2 * C * block()`` doubles
    per thread)."""
    return BLOCK

# cython: boundscheck=False, wraparound=False, cdivision=True
"""Fused optimiser updates: one pass over parameter, gradient and state per step.

The NumPy form of SGD with momentum makes four passes over memory per parameter array
(``v *= mu``, ``v += g``, a temporary ``lr * v``, ``p -= ...``) and Adam about ten; these
kernels read each array once and write it once, split into fixed blocks over OpenMP
threads. Every element is computed with the same operations, in the same order and
precision (the scalars rounded to the arrays' dtype first, as NumPy does with Python
floats), as the NumPy form in :mod:`cnncore.optim`: the results are the same bits, at any
thread count. Arrays are flat and C-contiguous (the caller checks).
"""
from libc.math cimport sqrt, sqrtf
from cython cimport floating
from cython.parallel cimport prange

cdef enum:
    BLOCK = 16384  # elements per task


def sgd_step(floating[::1] p, const floating[::1] g, floating[::1] v, double lr, double mu,
             double wd, bint nesterov, bint first, int n_threads):
    """One SGD step, PyTorch's rule (see :class:`cnncore.optim.SGD`): ``g' = g + wd * p``;
    with momentum (``mu > 0``) ``v = g'`` at the first step, else ``v = mu * v + g'``, and
    ``d = g' + mu * v`` (Nesterov) or ``v``; without, ``d = g'``; ``p -= lr * d``. ``v`` is
    not touched when ``mu == 0``."""
    cdef Py_ssize_t n = p.shape[0], blk, i, i1
    cdef floating lr_ = <floating> lr, mu_ = <floating> mu, wd_ = <floating> wd
    cdef floating gi, vi, d
    cdef bint use_wd = wd != 0, momentum = mu != 0
    for blk in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule='static',
                      num_threads=n_threads):
        i1 = (blk + 1) * BLOCK if (blk + 1) * BLOCK < n else n
        for i in range(blk * BLOCK, i1):
            gi = g[i]
            if use_wd:
                gi = gi + wd_ * p[i]
            if momentum:
                if first:
                    vi = gi
                else:
                    vi = mu_ * v[i]
                    vi = vi + gi
                v[i] = vi
                if nesterov:
                    d = mu_ * vi
                    d = gi + d
                else:
                    d = vi
            else:
                d = gi
            d = lr_ * d
            p[i] = p[i] - d


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


def adam_step(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
              double step_size, double b1, double b2, double sqrt_c2, double eps, double wd,
              double decay, int n_threads):
    """One Adam step, PyTorch's rule (see :class:`cnncore.optim.Adam`): ``p *= decay``
    (AdamW's decoupled decay; 1 for none), ``g' = g + wd * p`` (L2; ``wd`` 0 for AdamW),
    ``m = b1 * m + (1 - b1) * g'``, ``v = b2 * v + (1 - b2) * g'^2``,
    ``p -= step_size * m / (sqrt(v) / sqrt_c2 + eps)``."""
    cdef Py_ssize_t n = p.shape[0], blk, i, i1
    cdef floating b1_ = <floating> b1, b2_ = <floating> b2
    cdef floating c1_ = <floating> (1.0 - b1), c2_ = <floating> (1.0 - b2)
    cdef floating step_ = <floating> step_size, sqrt_c2_ = <floating> sqrt_c2
    cdef floating eps_ = <floating> eps, wd_ = <floating> wd, decay_ = <floating> decay
    cdef floating gi, pi, mi, vi, t, denom
    cdef bint use_wd = wd != 0, use_decay = decay != 1.0
    for blk in prange((n + BLOCK - 1) // BLOCK, nogil=True, schedule='static',
                      num_threads=n_threads):
        i1 = (blk + 1) * BLOCK if (blk + 1) * BLOCK < n else n
        for i in range(blk * BLOCK, i1):
            pi = p[i]
            if use_decay:
                pi = pi * decay_
            gi = g[i]
            if use_wd:
                t = wd_ * pi
                gi = gi + t
            mi = m[i] * b1_
            t = c1_ * gi
            mi = mi + t
            m[i] = mi
            vi = v[i] * b2_
            t = gi * gi
            t = c2_ * t
            vi = vi + t
            v[i] = vi
            denom = _sqrt(vi)
            denom = denom / sqrt_c2_
            denom = denom + eps_
            t = mi / denom
            t = step_ * t
            p[i] = pi - t


def block():
    """Elements per task (the caller caps its thread count by the number of blocks)."""
    return BLOCK

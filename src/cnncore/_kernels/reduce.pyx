# cython: boundscheck=False, wraparound=False
"""Reductions the convolution paths share: :func:`sum_chunks` (fixed partial gradients added
in chunk order) and :func:`bias_grad` (a channel's sum over the batch and the pixels, in
double). Each output element is one task's, summed in a fixed order: bit-identical at any
thread count."""
from cython cimport floating
from cython.parallel cimport prange

from cnncore._kernels._simd cimport _sum_lanes, CNN_LANES


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

# Index arithmetic shared by the convolution kernels.

cdef inline void _valid_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                              Py_ssize_t n_out, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Outputs o in [lo, hi) read input index ``o*stride + offset`` inside [0, size)."""
    cdef Py_ssize_t a = 0, b = 0
    if offset < 0:
        a = (-offset + stride - 1) // stride          # ceil(-offset / stride)
    if size - 1 - offset >= 0:
        b = (size - 1 - offset) // stride + 1
    if b > n_out:
        b = n_out
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b

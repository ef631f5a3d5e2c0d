# Declarations of the C helpers in csrc/cnncore_simd.h, and fused-type wrappers that pick
# the float or double version (one body for both dtypes in the kernels that use them).
from cython cimport floating
from libc.stdint cimport int32_t, int64_t

cdef extern from "cnncore_simd.h" nogil:
    enum: CNN_LANES
    void cnn_gather_rows_f(float* dst, Py_ssize_t dst_stride, const float* src,
                           Py_ssize_t src_stride, Py_ssize_t n, Py_ssize_t step,
                           Py_ssize_t rows)
    void cnn_gather_rows_d(double* dst, Py_ssize_t dst_stride, const double* src,
                           Py_ssize_t src_stride, Py_ssize_t n, Py_ssize_t step,
                           Py_ssize_t rows)
    void cnn_zero_rows_f(float* dst, Py_ssize_t dst_stride, Py_ssize_t n, Py_ssize_t rows)
    void cnn_zero_rows_d(double* dst, Py_ssize_t dst_stride, Py_ssize_t n, Py_ssize_t rows)
    void cnn_scatter_add_rows_f(float* dst, Py_ssize_t dst_stride, const float* src,
                                Py_ssize_t src_stride, Py_ssize_t n, Py_ssize_t step,
                                Py_ssize_t rows)
    void cnn_scatter_add_rows_d(double* dst, Py_ssize_t dst_stride, const double* src,
                                Py_ssize_t src_stride, Py_ssize_t n, Py_ssize_t step,
                                Py_ssize_t rows)
    void cnn_sum_lanes_f(double* acc, const float* x, Py_ssize_t n)
    void cnn_sum_lanes_d(double* acc, const double* x, Py_ssize_t n)
    unsigned int cnn_set_flush_denormals(int enable)
    void cnn_restore_mxcsr(unsigned int old)
    void cnn_leaky_relu_f(float* y, const float* x, Py_ssize_t n, float slope)
    void cnn_leaky_relu_d(double* y, const double* x, Py_ssize_t n, double slope)
    void cnn_relu_backward_f(float* dx, const float* dy, const float* x, Py_ssize_t n)
    void cnn_relu_backward_d(double* dx, const double* dy, const double* x, Py_ssize_t n)
    void cnn_leaky_relu_backward_f(float* dx, const float* dy, const float* x, Py_ssize_t n,
                                   float slope)
    void cnn_leaky_relu_backward_d(double* dx, const double* dy, const double* x,
                                   Py_ssize_t n, double slope)
    void cnn_relu_f(float* y, const float* x, Py_ssize_t n)
    void cnn_relu_d(double* y, const double* x, Py_ssize_t n)
    void cnn_axpy_f(float* y, const float* x, Py_ssize_t n, Py_ssize_t stride, float a)
    void cnn_axpy_d(double* y, const double* x, Py_ssize_t n, Py_ssize_t stride, double a)
    void cnn_scatter_axpy_f(float* dx, const float* dy, Py_ssize_t n, Py_ssize_t stride, float a)
    void cnn_scatter_axpy_d(double* dx, const double* dy, Py_ssize_t n, Py_ssize_t stride,
                            double a)
    float cnn_dot_f(const float* a, const float* b, Py_ssize_t n, Py_ssize_t stride)
    double cnn_dot_d(const double* a, const double* b, Py_ssize_t n, Py_ssize_t stride)
    void cnn_max_row_f(float* m, const float* x, Py_ssize_t n, Py_ssize_t stride)
    void cnn_max_row_d(double* m, const double* x, Py_ssize_t n, Py_ssize_t stride)
    void cnn_max_row_arg_f(float* m, int32_t* a, const float* x, Py_ssize_t n,
                           Py_ssize_t stride, int32_t tap)
    void cnn_max_row_arg_d(double* m, int32_t* a, const double* x, Py_ssize_t n,
                           Py_ssize_t stride, int32_t tap)
    void cnn_max_pool_2x2_f(float* y, const float* x, Py_ssize_t W, Py_ssize_t Ho,
                            Py_ssize_t Wo)
    void cnn_max_pool_2x2_d(double* y, const double* x, Py_ssize_t W, Py_ssize_t Ho,
                            Py_ssize_t Wo)
    void cnn_max_pool_2x2_arg_f(float* y, int64_t* idx, const float* x, Py_ssize_t W,
                                Py_ssize_t Ho, Py_ssize_t Wo)


cdef inline void _gather_rows(floating* dst, Py_ssize_t dst_stride, const floating* src,
                              Py_ssize_t src_stride, Py_ssize_t n, Py_ssize_t step,
                              Py_ssize_t rows) noexcept nogil:
    if floating is float:
        cnn_gather_rows_f(dst, dst_stride, src, src_stride, n, step, rows)
    else:
        cnn_gather_rows_d(dst, dst_stride, src, src_stride, n, step, rows)


cdef inline void _zero_rows(floating* dst, Py_ssize_t dst_stride, Py_ssize_t n,
                            Py_ssize_t rows) noexcept nogil:
    if floating is float:
        cnn_zero_rows_f(dst, dst_stride, n, rows)
    else:
        cnn_zero_rows_d(dst, dst_stride, n, rows)


cdef inline void _scatter_add_rows(floating* dst, Py_ssize_t dst_stride,
                                   const floating* src, Py_ssize_t src_stride, Py_ssize_t n,
                                   Py_ssize_t step, Py_ssize_t rows) noexcept nogil:
    if floating is float:
        cnn_scatter_add_rows_f(dst, dst_stride, src, src_stride, n, step, rows)
    else:
        cnn_scatter_add_rows_d(dst, dst_stride, src, src_stride, n, step, rows)


cdef inline void _sum_lanes(double* acc, const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        cnn_sum_lanes_f(acc, x, n)
    else:
        cnn_sum_lanes_d(acc, x, n)


cdef inline void _axpy(floating* y, const floating* x, Py_ssize_t n, Py_ssize_t stride,
                       floating a) noexcept nogil:
    if floating is float:
        cnn_axpy_f(y, x, n, stride, a)
    else:
        cnn_axpy_d(y, x, n, stride, a)


cdef inline void _scatter_axpy(floating* dx, const floating* dy, Py_ssize_t n,
                               Py_ssize_t stride, floating a) noexcept nogil:
    if floating is float:
        cnn_scatter_axpy_f(dx, dy, n, stride, a)
    else:
        cnn_scatter_axpy_d(dx, dy, n, stride, a)


cdef inline floating _dot(const floating* a, const floating* b, Py_ssize_t n,
                          Py_ssize_t stride) noexcept nogil:
    if floating is float:
        return cnn_dot_f(a, b, n, stride)
    else:
        return cnn_dot_d(a, b, n, stride)


cdef inline void _max_row(floating* m, const floating* x, Py_ssize_t n,
                          Py_ssize_t stride) noexcept nogil:
    if floating is float:
        cnn_max_row_f(m, x, n, stride)
    else:
        cnn_max_row_d(m, x, n, stride)


cdef inline void _max_row_arg(floating* m, int32_t* a, const floating* x, Py_ssize_t n,
                              Py_ssize_t stride, int32_t tap) noexcept nogil:
    if floating is float:
        cnn_max_row_arg_f(m, a, x, n, stride, tap)
    else:
        cnn_max_row_arg_d(m, a, x, n, stride, tap)


cdef inline void _max_pool_2x2(floating* y, const floating* x, Py_ssize_t W, Py_ssize_t Ho,
                               Py_ssize_t Wo) noexcept nogil:
    if floating is float:
        cnn_max_pool_2x2_f(y, x, W, Ho, Wo)
    else:
        cnn_max_pool_2x2_d(y, x, W, Ho, Wo)


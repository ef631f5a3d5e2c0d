# Declarations of the C helpers in csrc/cnncore_simd.h.
cdef extern from "cnncore_simd.h" nogil:
    void cnn_gather_f(float* dst, const float* src, Py_ssize_t n, Py_ssize_t stride)
    void cnn_gather_d(double* dst, const double* src, Py_ssize_t n, Py_ssize_t stride)
    void cnn_scatter_add_f(float* dst, const float* src, Py_ssize_t n, Py_ssize_t stride)
    void cnn_scatter_add_d(double* dst, const double* src, Py_ssize_t n, Py_ssize_t stride)
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

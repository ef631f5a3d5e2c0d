"""Row-major GEMM through ``scipy.linalg.cython_blas``, callable without the GIL."""
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef void _gemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating* A, int lda,   # IN
                const floating* B, int ldb,                   # IN
                floating beta, floating* C, int ldc           # OUT
                ) noexcept nogil:
    """Row-major ``C (m x n) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C``.

    BLAS is column-major and a row-major matrix is its transpose, so we ask BLAS for
    ``C^T = op(B)^T @ op(A)^T``: operands and flags are swapped, nothing is copied.
    """
    cdef char ta_ = ta
    cdef char tb_ = tb
    if floating is float:
        sgemm(&tb_, &ta_, &n, &m, &k, &alpha, <float*> B, &ldb, <float*> A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&tb_, &ta_, &n, &m, &k, &alpha, <double*> B, &ldb, <double*> A, &lda,
              &beta, C, &ldc)

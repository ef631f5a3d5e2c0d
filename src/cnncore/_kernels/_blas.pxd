# Row-major GEMM on top of scipy's BLAS (scikit-learn's _cython_blas pattern).
from cython cimport floating

cpdef enum BLAS_Trans:
    NoTrans = 110  # ord('n')
    Trans = 116    # ord('t')

cdef void _gemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating* A, int lda,
                const floating* B, int ldb,
                floating beta, floating* C, int ldc) noexcept nogil

# Row-major GEMM on top of scipy's BLAS (scikit-learn's _cython_blas pattern).
from cython cimport floating

cpdef enum BLAS_Trans:
    NoTrans = 110  # ord('n')
    Trans = 116    # ord('t')

cdef void _gemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating* A, int lda,
                const floating* B, int ldb,
                floating beta, floating* C, int ldc) noexcept nogil


# The packed-weight GEMM (csrc/cnncore_gemm.h; see _blas.pyx).
cdef extern from "cnncore_gemm.h":
    enum:
        CNN_PGEMM_OB  # rows per packed block: column k of a block starts at wp + k*CNN_PGEMM_OB
        CNN_PGEMM_ROWS  # the packed rows are a multiple of this (cnn_pgemm_rows)
    Py_ssize_t cnn_pgemm_rows(Py_ssize_t M) nogil  # rows of the packed copy of M rows

cdef enum:
    _PACKED_MIN_COLS = 64

cdef void _pgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* wp, Py_ssize_t ks,
                 const floating* B, Py_ssize_t ldb, const floating* bias,
                 floating* C, Py_ssize_t ldc, bint add=*) noexcept nogil

cdef void _pgemm_pack(floating* wp, const floating* w, Py_ssize_t M, Py_ssize_t K,
                      Py_ssize_t ldw, Py_ssize_t o0, Py_ssize_t o1,
                      Py_ssize_t sk=*) noexcept nogil

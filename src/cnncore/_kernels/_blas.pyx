# cython: boundscheck=False, wraparound=False
"""Row-major GEMM through ``scipy.linalg.cython_blas``, and the packed-weight GEMM of
``csrc/cnncore_gemm.h``, both callable without the GIL."""
from cython.parallel cimport prange
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


# ----------------------------------------------------------------------------- packed GEMM
# csrc/cnncore_gemm.h: C = W @ B (+ bias) against weights packed once (see there). The
# convolutions use it where it beats BLAS: on AVX-512 machines (on AVX2 it ran at 0.55-0.8x
# OpenBLAS's speed, the baseline at 0.3x) and for products of at least PACKED_MIN_COLS
# columns (16 columns: 0.7-0.85x; 64 and up: 1.1-1.3x for 256 x 1152, 512 x 512 and
# 128 x 128 weights; one core, float32).

cdef extern from "cnncore_gemm.h" nogil:
    int cnn_cr_isa()
    void cnn_pgemm_f(int isa, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* wp,
                     Py_ssize_t ks, const float* B, Py_ssize_t ldb, const float* bias,
                     int add, float* C, Py_ssize_t ldc)
    void cnn_pgemm_d(int isa, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* wp,
                     Py_ssize_t ks, const double* B, Py_ssize_t ldb, const double* bias,
                     int add, double* C, Py_ssize_t ldc)
    void cnn_pgemm_pack_f(float* wp, const float* w, Py_ssize_t M, Py_ssize_t K,
                          Py_ssize_t ldw, Py_ssize_t sk, Py_ssize_t o0, Py_ssize_t o1)
    void cnn_pgemm_pack_d(double* wp, const double* w, Py_ssize_t M, Py_ssize_t K,
                          Py_ssize_t ldw, Py_ssize_t sk, Py_ssize_t o0, Py_ssize_t o1)

cdef int _ISA = cnn_cr_isa()
ISA = _ISA  # 2: AVX-512F, 1: AVX2 + FMA, 0: baseline
PACKED = _ISA >= 2
PACKED_MIN_COLS = _PACKED_MIN_COLS


cdef void _pgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* wp, Py_ssize_t ks,
                 const floating* B, Py_ssize_t ldb, const floating* bias,   # IN
                 floating* C, Py_ssize_t ldc, bint add=False) noexcept nogil:  # OUT
    """``C (M x N) = W[:, k0:k0+K] @ B (K x N) (+ bias if not NULL)``, or ``C += ...`` if
    ``add``, at this machine's ISA level, ``wp`` pointing at column k0 of the packed W
    whose row blocks are ``ks`` long."""
    if floating is float:
        cnn_pgemm_f(_ISA, M, N, K, wp, ks, B, ldb, bias, add, C, ldc)
    else:
        cnn_pgemm_d(_ISA, M, N, K, wp, ks, B, ldb, bias, add, C, ldc)


cdef void _pgemm_pack(floating* wp, const floating* w, Py_ssize_t M, Py_ssize_t K,
                      Py_ssize_t ldw, Py_ssize_t o0, Py_ssize_t o1,
                      Py_ssize_t sk=1) noexcept nogil:
    """Rows [o0, o1) (o0 a multiple of 6) of W (M x K, entry (o, k) at ``w[o*ldw + k*sk]``)
    into wp."""
    if floating is float:
        cnn_pgemm_pack_f(wp, w, M, K, ldw, sk, o0, o1)
    else:
        cnn_pgemm_pack_d(wp, w, M, K, ldw, sk, o0, o1)


PACKED_ROWS = CNN_PGEMM_ROWS


def packed_rows(Py_ssize_t M):
    """Rows of the packed copy of an M-row matrix (M rounded up to PACKED_ROWS)."""
    return cnn_pgemm_rows(M)


def pack(const floating[:, :] w,     # IN  (M, K), any positive strides (w.T too)
         floating[::1] wp,           # OUT (packed_rows(M) * K,)
         int n_threads):
    """The packed copy of ``w`` for the packed GEMM (blocks of 6 rows, k-major)."""
    cdef Py_ssize_t M = w.shape[0], K = w.shape[1], R = cnn_pgemm_rows(M), r0
    cdef Py_ssize_t ldw = w.strides[0] // sizeof(floating), sk = w.strides[1] // sizeof(floating)
    if wp.shape[0] != R * K:
        raise ValueError(f"pack: wp must have {R * K} elements, got {wp.shape[0]}")
    if w.strides[0] <= 0 or w.strides[1] <= 0 or w.strides[0] % sizeof(floating) \
            or w.strides[1] % sizeof(floating):
        raise ValueError("pack: w must have positive strides, whole elements apart")
    if K == 0:
        return
    for r0 in prange(0, R, CNN_PGEMM_ROWS, nogil=True, schedule='static',
                     num_threads=n_threads):
        _pgemm_pack(&wp[0], &w[0, 0], M, K, ldw, r0, r0 + CNN_PGEMM_ROWS, sk)


def pgemm(int isa, const floating[::1] wp,   # IN  pack(W) of W (M, ks), from column k0 on
          Py_ssize_t ks,
          const floating[:, ::1] B,          # IN  (K, >= N)
          const floating[::1] bias,          # IN  (M,) or (0,) for none
          floating[:, ::1] C,                # OUT (M, >= N) (IN/OUT if add)
          Py_ssize_t N, bint add=False):
    """``C[:, :N] = W[:, k0:k0+K] @ B[:, :N] (+ bias)`` (``+=`` if ``add``) by the packed
    GEMM of ISA level ``isa`` (at most ISA), for the tests: the kernels call it at the
    machine's level."""
    cdef Py_ssize_t M = C.shape[0], K = B.shape[0]
    cdef Py_ssize_t n_blocks = cnn_pgemm_rows(M) // CNN_PGEMM_OB
    if not 0 <= isa <= _ISA:
        raise ValueError(f"pgemm: isa must be in [0, {_ISA}], got {isa}")
    if (wp.shape[0] < ((n_blocks - 1) * ks + K) * CNN_PGEMM_OB or K > ks or N > C.shape[1]
            or N > B.shape[1] or bias.shape[0] not in (0, M) or K == 0 or M == 0 or N <= 0):
        raise ValueError("pgemm: inconsistent shapes")
    with nogil:
        if floating is float:
            cnn_pgemm_f(isa, M, N, K, &wp[0], ks, &B[0, 0], B.shape[1],
                        &bias[0] if bias.shape[0] else NULL, add, &C[0, 0], C.shape[1])
        else:
            cnn_pgemm_d(isa, M, N, K, &wp[0], ks, &B[0, 0], B.shape[1],
                        &bias[0] if bias.shape[0] else NULL, add, &C[0, 0], C.shape[1])

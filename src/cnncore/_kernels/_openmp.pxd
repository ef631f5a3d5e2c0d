# Lets the same source compile with or without OpenMP (scikit-learn's _openmp_helpers.pxd).
cdef extern from *:
    """
    #ifdef _OPENMP
        #include <omp.h>
        #define CNNCORE_OPENMP_ENABLED 1
    #else
        #define CNNCORE_OPENMP_ENABLED 0
        #define omp_get_max_threads() 1
        #define omp_get_thread_num() 0
    #endif
    """
    bint CNNCORE_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil

"""Which build is this: OpenMP on or off."""
from cnncore._kernels._openmp cimport CNNCORE_OPENMP_ENABLED, omp_get_max_threads


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (parallel), False for a serial build."""
    return bool(CNNCORE_OPENMP_ENABLED)


def openmp_max_threads():
    """``omp_get_max_threads()`` of the runtime (1 on a serial build)."""
    return omp_get_max_threads()

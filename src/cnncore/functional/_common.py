"""What every kernel family of :mod:`cnncore.functional` shares: the thread policy, the BLAS
thread guard, the geometry cache and the per-thread scratch buffers."""

import math
import os
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import _config
from .._config import resolve_threads

# A parallel region costs microseconds on an idle machine and far more when another process
# holds a core (the team waits for its slowest thread), so small calls run on fewer threads:
# each thread gets at least this much work. Results do not depend on the choice.
_MIN_FLOPS_PER_THREAD = 1 << 21   # compute-bound kernels (conv, linear)
_MIN_BYTES_PER_THREAD = 1 << 18   # memory-bound kernels (activations, losses, global pooling)
# Window pooling counts every byte it reads and writes against this: its compares and selects
# cost about twice a ReLU per byte (max pool 2x2/2 at batch 64: LeNet's second pool, 0.4 MB
# in, is 1.8-1.9x faster on 2 threads, with or without indices, and so is its backward).
_MIN_POOL_BYTES_PER_THREAD = 1 << 17


def _threads(n_threads, where, tasks, flops=0, nbytes=0,
             bytes_per_thread=_MIN_BYTES_PER_THREAD):
    """Threads for one call: the requested count, capped by the number of independent
    tasks and by the amount of work (see _MIN_FLOPS_PER_THREAD)."""
    # a plain positive int (the common case) skips resolve_threads' numbers.Integral check
    n = n_threads if type(n_threads) is int and n_threads > 0 else resolve_threads(n_threads,
                                                                                   where)
    if _config.forked_child:  # libgomp cannot start threads after fork() (see _config)
        return 1
    by_work = max(flops // _MIN_FLOPS_PER_THREAD, nbytes // bytes_per_thread, 1)
    return int(max(1, min(n, tasks, by_work)))


_blas_libs = None


class _one_blas_thread:
    """Hold SciPy's BLAS (the one our kernels call) to one thread while our OpenMP threads
    call it — no N*M oversubscription, as scikit-learn does around its prange + GEMM
    loops — and restore the previous count afterwards: ``with _one_blas_thread(): ...``.

    threadpoolctl finds the library once; each use then costs a few ctypes calls, where
    ``threadpool_limits`` would cost tens of microseconds per kernel call. A class rather
    than a @contextmanager generator: about 0.7 us less per call.
    """

    __slots__ = ("_saved",)

    def __enter__(self):
        global _blas_libs
        if _blas_libs is None:
            import scipy.linalg  # noqa: F401  (loads the BLAS behind scipy.linalg.cython_blas)
            libs = ThreadpoolController().select(user_api="blas").lib_controllers
            ours = [lib for lib in libs if "scipy" in os.path.dirname(lib.filepath or "")]
            _blas_libs = ours or libs  # e.g. conda: one BLAS shared with NumPy
        self._saved = saved = [(lib, lib.get_num_threads()) for lib in _blas_libs]
        for lib, n in saved:
            if n != 1:
                lib.set_num_threads(1)
        return self

    def __exit__(self, *exc_info):
        for lib, n in self._saved:
            if n != 1:
                lib.set_num_threads(n)
        return False

_GEOMETRY_CACHE = {}


def _typed(value):
    """Cache key part that tells 1 from 1.0 and True (equal as dict keys, not as arguments)."""
    if type(value) in (tuple, list):
        return (type(value),) + tuple(_typed(v) for v in value)
    return (type(value), value)



def cached_geometry(key, make):
    """``make()`` parsed once per distinct ``key`` (a layer repeats its call every step);
    nothing is cached when ``make`` raises."""
    geo = _GEOMETRY_CACHE.get(key)
    if geo is None:
        geo = make()
        if len(_GEOMETRY_CACHE) > 1024:
            _GEOMETRY_CACHE.clear()
        _GEOMETRY_CACHE[key] = geo
    return geo


# Scratch buffers (im2col columns, per-chunk weight gradients) are kept between calls, one
# set per Python thread: a training step would otherwise map and fault in fresh pages for
# them on every call. Buffers larger than this are allocated per call and not kept.
_MAX_CACHED_SCRATCH_BYTES = 64 << 20
_scratch = threading.local()


def _scratch_array(name, shape, dtype):
    """A C-contiguous scratch array of ``shape``; its contents are undefined."""
    need = max(1, math.prod(shape))  # at least one element, so a pointer to it exists
    dtype = np.dtype(dtype)
    if need * dtype.itemsize > _MAX_CACHED_SCRATCH_BYTES:
        return np.empty(need, dtype=dtype)[:math.prod(shape)].reshape(shape)
    cache = _scratch.__dict__.setdefault("buffers", {})
    buf = cache.get((name, dtype))
    if buf is None or buf.size < need:
        buf = cache[(name, dtype)] = np.empty(need, dtype=dtype)
    return buf[:math.prod(shape)].reshape(shape)


def _work(n_threads, size, dtype):
    """One im2col buffer per thread (at least one element, so a pointer to it exists)."""
    return _scratch_array("im2col", (n_threads, max(size, 1)), dtype)


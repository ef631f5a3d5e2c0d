"""NumPy data allocator (NEP 49 handler) backed by the caching pool of csrc/cnncore_pool.h.

:class:`cnncore.memory_pool` is the public face; this module only builds the handler
capsule and switches NumPy's current handler (a context variable) to it and back.
"""
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
from libc.stdlib cimport malloc, free
from libc.string cimport strncpy

cnp.import_array()

cdef extern from "cnncore_pool.h" nogil:
    ctypedef struct cnn_pool:
        size_t min_bytes, max_bytes, cached_bytes
        int active, n_classes
        size_t hits, misses, releases
    cnn_pool* cnn_pool_new(size_t min_bytes, size_t max_bytes)
    void cnn_pool_delete(cnn_pool* pool)
    void cnn_pool_drain(cnn_pool* pool)
    void cnn_pool_set_active(cnn_pool* pool, int active)
    void* cnn_pool_malloc(void* ctx, size_t size)
    void* cnn_pool_calloc(void* ctx, size_t nelem, size_t elsize)
    void* cnn_pool_realloc(void* ctx, void* ptr, size_t new_size)
    void cnn_pool_free(void* ctx, void* ptr, size_t size)
    int cnn_pool_install_atfork()

if cnn_pool_install_atfork() != 0:  # fork() safety of the pools' locks (cnncore_pool.h)
    raise OSError("memory_pool: pthread_atfork failed")

cdef const char* CAPSULE_NAME = b"mem_handler"  # the name NumPy requires


cdef void _destroy(object capsule) noexcept:
    """Capsule destructor: runs once no array allocated by the pool is alive any more."""
    cdef cnp.PyDataMem_Handler* handler = <cnp.PyDataMem_Handler*> PyCapsule_GetPointer(
        capsule, CAPSULE_NAME)
    cnn_pool_delete(<cnn_pool*> handler.allocator.ctx)
    free(handler)


cdef class PoolHandler:
    """One pool and its NumPy handler capsule.

    Every array allocated while the capsule is NumPy's current handler keeps a reference
    to it, so the pool outlives all of them; blocks are cached only while ``active``.
    """
    cdef object capsule
    cdef cnn_pool* pool

    def __cinit__(self, size_t min_bytes, size_t max_bytes):
        cdef cnp.PyDataMem_Handler* handler = <cnp.PyDataMem_Handler*> malloc(
            sizeof(cnp.PyDataMem_Handler))
        if handler == NULL:
            raise MemoryError("memory_pool: cannot allocate the NumPy handler")
        self.pool = cnn_pool_new(min_bytes, max_bytes)
        if self.pool == NULL:
            free(handler)
            raise MemoryError("memory_pool: cannot allocate the pool")
        strncpy(handler.name, b"cnncore_pool", 127)
        handler.version = 1
        handler.allocator.ctx = self.pool
        handler.allocator.malloc = cnn_pool_malloc
        handler.allocator.calloc = cnn_pool_calloc
        handler.allocator.realloc = cnn_pool_realloc
        handler.allocator.free = cnn_pool_free
        try:
            self.capsule = PyCapsule_New(handler, CAPSULE_NAME, _destroy)
        except BaseException:
            cnn_pool_delete(self.pool)
            free(handler)
            raise

    def activate(self):
        """Make the pool NumPy's handler in the current context; return the previous one."""
        cnn_pool_set_active(self.pool, 1)
        return cnp.PyDataMem_SetHandler(self.capsule)

    def deactivate(self, previous):
        """Restore ``previous`` as NumPy's handler and free every cached block. Arrays
        still alive are freed normally later."""
        cnp.PyDataMem_SetHandler(previous)
        cnn_pool_set_active(self.pool, 0)
        cnn_pool_drain(self.pool)

    def stats(self):
        """``hits``, ``misses``, ``releases`` (blocks freed, not cached), ``cached_bytes``,
        ``size_classes``."""
        return {"hits": self.pool.hits, "misses": self.pool.misses,
                "releases": self.pool.releases, "cached_bytes": self.pool.cached_bytes,
                "size_classes": self.pool.n_classes}

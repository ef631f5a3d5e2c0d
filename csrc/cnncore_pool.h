/* A caching allocator for NumPy array data (NEP 49 handler functions).
 *
 * Why: a training step frees and re-allocates the same array sizes every step. glibc hands
 * large freed blocks back to the kernel (munmap, or trimming the heap top) and the next step
 * faults every 4 KiB page in again: about 1 ms of a 4 ms LeNet-5 step at batch 64. The pool
 * keeps freed blocks of a size class and hands them out again, as PyTorch's caching
 * allocator does for GPU memory.
 *
 * Layout of every block handed to NumPy (pooled or not):
 *
 *     raw (from malloc/calloc) ... [cnn_pool_header] data (64-byte aligned) ...
 *
 * The header, just before ``data``, keeps the raw pointer and the rounded size, so free and
 * realloc never trust the size NumPy passes back. Sizes are rounded up to 64 bytes; blocks
 * of at least ``min_bytes`` are cached per exact rounded size (up to CNN_POOL_CLASSES
 * sizes and ``max_bytes`` in all), smaller ones go straight back to free().
 *
 * Thread safety: one PyThread lock (it does not need the GIL) around the free lists.
 *
 * fork(): every live pool is in a registry; cnn_pool_install_atfork registers handlers that
 * take the registry's mutex and every pool's lock before fork() and release them after it,
 * in the parent and in the child. A fork() that lands while another thread is inside a
 * free-list update therefore waits for it, and the child never inherits a lock held by a
 * thread that does not exist there (which would deadlock its next allocation).
 */
#ifndef CNNCORE_POOL_H
#define CNNCORE_POOL_H

#include <Python.h>
#include <pythread.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CNN_POOL_ALIGN 64
#define CNN_POOL_CLASSES 256

typedef struct cnn_pool_header {
    void *raw;      /* what malloc returned */
    size_t size;    /* usable bytes at data (rounded up to CNN_POOL_ALIGN) */
} cnn_pool_header;

typedef struct cnn_pool_block {  /* a cached block's first bytes: the free-list link */
    struct cnn_pool_block *next;
} cnn_pool_block;

typedef struct {
    size_t size;
    cnn_pool_block *head;
} cnn_pool_class;

typedef struct cnn_pool {
    struct cnn_pool *prev, *next;   /* the registry of live pools (cnn_pool_registry) */
    PyThread_type_lock lock;
    size_t min_bytes, max_bytes, cached_bytes;
    int active;                 /* 0: cache nothing (outside its `with` block) */
    int n_classes;
    size_t hits, misses, releases;
    cnn_pool_class classes[CNN_POOL_CLASSES];
} cnn_pool;

static pthread_mutex_t cnn_pool_registry_mutex = PTHREAD_MUTEX_INITIALIZER;
static cnn_pool *cnn_pool_registry = NULL;

static void cnn_pool_before_fork(void) {
    pthread_mutex_lock(&cnn_pool_registry_mutex);
    for (cnn_pool *p = cnn_pool_registry; p != NULL; p = p->next)
        PyThread_acquire_lock(p->lock, WAIT_LOCK);
}

static void cnn_pool_after_fork(void) {  /* in the parent and in the child */
    for (cnn_pool *p = cnn_pool_registry; p != NULL; p = p->next)
        PyThread_release_lock(p->lock);
    pthread_mutex_unlock(&cnn_pool_registry_mutex);
}

/* Register the fork handlers (once per process: call it from the module's init). */
static int cnn_pool_install_atfork(void) {
    return pthread_atfork(cnn_pool_before_fork, cnn_pool_after_fork, cnn_pool_after_fork);
}

static inline size_t cnn_pool_round(size_t size) {
    return (size + CNN_POOL_ALIGN - 1) & ~(size_t)(CNN_POOL_ALIGN - 1);
}

static inline cnn_pool_header *cnn_pool_head(void *data) {
    return (cnn_pool_header *)data - 1;
}

/* A fresh block of `size` (already rounded) usable bytes; zeroed if `zero`. */
static void *cnn_pool_fresh(size_t size, int zero) {
    size_t total = size + sizeof(cnn_pool_header) + CNN_POOL_ALIGN;
    if (total < size) return NULL;  /* overflow */
    char *raw = zero ? (char *)calloc(1, total) : (char *)malloc(total);
    if (raw == NULL) return NULL;
    uintptr_t start = (uintptr_t)(raw + sizeof(cnn_pool_header));
    char *data = (char *)((start + CNN_POOL_ALIGN - 1) & ~(uintptr_t)(CNN_POOL_ALIGN - 1));
    cnn_pool_head(data)->raw = raw;
    cnn_pool_head(data)->size = size;
    return data;
}

static inline void cnn_pool_release(void *data) {
    free(cnn_pool_head(data)->raw);
}

/* Index of the class for `size`, or -1. Called with the lock held. */
static int cnn_pool_find(const cnn_pool *pool, size_t size) {
    for (int i = 0; i < pool->n_classes; ++i)
        if (pool->classes[i].size == size) return i;
    return -1;
}

/* A cached block of exactly `size` rounded bytes, or NULL. */
static void *cnn_pool_take(cnn_pool *pool, size_t size) {
    void *data = NULL;
    if (size < pool->min_bytes) return NULL;
    PyThread_acquire_lock(pool->lock, WAIT_LOCK);
    int i = cnn_pool_find(pool, size);
    if (i >= 0 && pool->classes[i].head != NULL) {
        cnn_pool_block *b = pool->classes[i].head;
        pool->classes[i].head = b->next;
        pool->cached_bytes -= size;
        pool->hits++;
        data = b;
    } else {
        pool->misses++;
    }
    PyThread_release_lock(pool->lock);
    return data;
}

static void *cnn_pool_malloc(void *ctx, size_t size) {
    size_t r = cnn_pool_round(size ? size : 1);
    if (r < size) return NULL;
    void *data = cnn_pool_take((cnn_pool *)ctx, r);
    return data ? data : cnn_pool_fresh(r, 0);
}

static void *cnn_pool_calloc(void *ctx, size_t nelem, size_t elsize) {
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    size_t size = nelem * elsize;
    size_t r = cnn_pool_round(size ? size : 1);
    if (r < size) return NULL;
    void *data = cnn_pool_take((cnn_pool *)ctx, r);
    if (data == NULL) return cnn_pool_fresh(r, 1);
    memset(data, 0, r);
    return data;
}

static void cnn_pool_free(void *ctx, void *data, size_t size_unused) {
    cnn_pool *pool = (cnn_pool *)ctx;
    (void)size_unused;  /* the header knows the real size */
    if (data == NULL) return;
    size_t size = cnn_pool_head(data)->size;
    int kept = 0;
    if (size >= pool->min_bytes) {
        PyThread_acquire_lock(pool->lock, WAIT_LOCK);
        if (pool->active && pool->cached_bytes + size <= pool->max_bytes) {
            int i = cnn_pool_find(pool, size);
            if (i < 0 && pool->n_classes < CNN_POOL_CLASSES) {
                i = pool->n_classes++;
                pool->classes[i].size = size;
                pool->classes[i].head = NULL;
            }
            if (i >= 0) {
                cnn_pool_block *b = (cnn_pool_block *)data;
                b->next = pool->classes[i].head;
                pool->classes[i].head = b;
                pool->cached_bytes += size;
                kept = 1;
            }
        }
        if (!kept) pool->releases++;
        PyThread_release_lock(pool->lock);
    }
    if (!kept) cnn_pool_release(data);
}

static void *cnn_pool_realloc(void *ctx, void *data, size_t new_size) {
    if (data == NULL) return cnn_pool_malloc(ctx, new_size);
    size_t old = cnn_pool_head(data)->size;
    size_t r = cnn_pool_round(new_size ? new_size : 1);
    if (r < new_size) return NULL;
    if (r == old) return data;
    void *fresh = cnn_pool_malloc(ctx, new_size);
    if (fresh == NULL) return NULL;  /* the old block stays valid, as with realloc */
    memcpy(fresh, data, old < r ? old : r);
    cnn_pool_free(ctx, data, old);
    return fresh;
}

/* Start (1) or stop (0) caching freed blocks. */
static void cnn_pool_set_active(cnn_pool *pool, int active) {
    PyThread_acquire_lock(pool->lock, WAIT_LOCK);
    pool->active = active;
    PyThread_release_lock(pool->lock);
}

/* Free every cached block (the pool keeps working afterwards). */
static void cnn_pool_drain(cnn_pool *pool) {
    PyThread_acquire_lock(pool->lock, WAIT_LOCK);
    for (int i = 0; i < pool->n_classes; ++i) {
        cnn_pool_block *b = pool->classes[i].head;
        while (b != NULL) {
            cnn_pool_block *next = b->next;
            cnn_pool_release(b);
            b = next;
        }
        pool->classes[i].head = NULL;
    }
    pool->n_classes = 0;
    pool->cached_bytes = 0;
    PyThread_release_lock(pool->lock);
}

static cnn_pool *cnn_pool_new(size_t min_bytes, size_t max_bytes) {
    cnn_pool *pool = (cnn_pool *)calloc(1, sizeof(cnn_pool));
    if (pool == NULL) return NULL;
    pool->lock = PyThread_allocate_lock();
    if (pool->lock == NULL) {
        free(pool);
        return NULL;
    }
    pool->min_bytes = cnn_pool_round(min_bytes ? min_bytes : 1);
    pool->max_bytes = max_bytes;
    pthread_mutex_lock(&cnn_pool_registry_mutex);
    pool->next = cnn_pool_registry;
    if (cnn_pool_registry != NULL) cnn_pool_registry->prev = pool;
    cnn_pool_registry = pool;
    pthread_mutex_unlock(&cnn_pool_registry_mutex);
    return pool;
}

static void cnn_pool_delete(cnn_pool *pool) {
    if (pool == NULL) return;
    pthread_mutex_lock(&cnn_pool_registry_mutex);
    if (pool->prev != NULL) pool->prev->next = pool->next;
    else cnn_pool_registry = pool->next;
    if (pool->next != NULL) pool->next->prev = pool->prev;
    pthread_mutex_unlock(&cnn_pool_registry_mutex);
    cnn_pool_drain(pool);
    PyThread_free_lock(pool->lock);
    free(pool);
}

#endif

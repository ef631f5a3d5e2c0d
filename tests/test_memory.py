"""cnncore.memory_pool: NumPy's allocator swapped for a caching pool inside a ``with``."""
import gc
import threading

import numpy as np
import pytest

import cnncore
from cnncore import memory_pool
from cnncore.memory import pool_active

handler_name = np._core.multiarray.get_handler_name if hasattr(np, "_core") else \
    np.core.multiarray.get_handler_name

MB = 1 << 20


def test_handler_is_installed_inside_and_restored_after():
    before = handler_name()
    with memory_pool():
        assert handler_name() == "cnncore_pool"
        a = np.empty(MB)
    assert handler_name() == before
    assert handler_name(a) == "cnncore_pool"  # an array remembers its allocator
    a[:] = 3.0  # still valid after the block
    assert a.sum() == 3.0 * MB


def test_pool_active():
    assert not pool_active()
    with memory_pool():
        assert pool_active()
    assert not pool_active()


def test_handler_restored_when_the_block_raises():
    before = handler_name()
    with pytest.raises(KeyError):
        with memory_pool():
            raise KeyError("boom")
    assert handler_name() == before


def test_freed_block_is_reused_for_the_same_size():
    with memory_pool() as pool:
        a = np.empty(MB, dtype=np.uint8)
        address = a.ctypes.data
        del a
        b = np.empty(MB, dtype=np.uint8)
        assert b.ctypes.data == address
        c = np.empty(MB + 4096, dtype=np.uint8)  # another size: a fresh block
        assert c.ctypes.data != address
        s = pool.stats()
    assert (s["hits"], s["misses"]) == (1, 2)
    assert s["size_classes"] == 1 and s["cached_bytes"] == 0


def test_blocks_are_64_byte_aligned():
    with memory_pool():
        arrays = [np.empty(n, dtype=np.float32) for n in (1, 3, 17, 5000, 70001)]
    assert all(a.ctypes.data % 64 == 0 for a in arrays)


def test_zeros_from_a_reused_block_are_zero():
    with memory_pool() as pool:
        a = np.full(300_000, 7.0)
        del a
        z = np.zeros(300_000)
        assert pool.stats()["hits"] == 1  # the dirty block came back...
        assert not z.any()                # ...and was cleared
        zl = np.zeros_like(np.ones((3, 100_000)))
        assert not zl.any()


def test_small_arrays_are_not_cached():
    with memory_pool(min_bytes=64 * 1024) as pool:
        for _ in range(5):
            a = np.ones(1000)  # 8000 bytes
            del a
    assert pool.stats()["hits"] == 0 and pool.stats()["size_classes"] == 0


def test_max_bytes_caps_the_cache():
    with memory_pool(max_bytes=3 * MB) as pool:
        arrays = [np.empty(MB, dtype=np.uint8) for _ in range(5)]
        del arrays
        s = pool.stats()
    assert s["cached_bytes"] == 3 * MB
    assert s["releases"] == 2


def test_exit_frees_the_cache_and_later_frees_are_plain():
    with memory_pool() as pool:
        a = np.ones(MB)
        b = np.ones(MB)
        del a
        assert pool.stats()["cached_bytes"] == 8 * MB
    assert pool.stats()["cached_bytes"] == 8 * MB  # figures at exit
    del b  # freed after the block: released, not cached (no crash, no leak to check)
    gc.collect()


def test_realloc_keeps_the_data():
    with memory_pool():
        a = np.arange(50_000, dtype=np.int64)
        a.resize(200_000, refcheck=False)  # grows through the handler's realloc
        assert np.array_equal(a[:50_000], np.arange(50_000))
        assert not a[50_000:].any()
        a.resize(10, refcheck=False)
        assert np.array_equal(a, np.arange(10))
        small = np.arange(5, dtype=np.float64)
        small.resize(100_000, refcheck=False)  # from an uncached to a cached size
        assert np.array_equal(small[:5], np.arange(5.0))


def test_zero_size_arrays():
    with memory_pool():
        e = np.empty(0)
        z = np.zeros((0, 5))
    assert e.size == 0 and z.shape == (0, 5)


def test_nested_pools_and_reuse_of_one_pool_object():
    outer, inner = memory_pool(), memory_pool()
    with outer:
        with inner:
            a = np.empty(MB)
            del a
            b = np.empty(MB)
            del b
        assert handler_name() == "cnncore_pool"
        with pytest.raises(RuntimeError, match="already in use"):
            with outer:
                pass
    assert inner.stats()["hits"] == 1 and outer.stats()["hits"] == 0
    with outer:  # a finished pool can be entered again
        pass


def test_other_threads_keep_numpys_allocator():
    seen = []
    with memory_pool():
        t = threading.Thread(target=lambda: seen.append(handler_name()))
        t.start()
        t.join()
    assert seen and seen[0] != "cnncore_pool"


def test_arrays_freed_by_other_threads_while_the_pool_allocates():
    """The free lists are shared: frees from worker threads must not corrupt them."""
    errors = []
    with memory_pool() as pool:
        batches = [[np.full(20_000 + 64 * (k % 4), float(k)) for k in range(200)]
                   for _ in range(4)]

        def drop(arrays):
            try:
                while arrays:
                    a = arrays.pop()
                    if a[0] != a[-1]:
                        errors.append("corrupted")
                    del a
            except Exception as e:  # pragma: no cover - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=drop, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for k in range(2000):
            a = np.full(20_000 + 64 * (k % 4), float(k))
            assert a[0] == a[-1] == k
            del a
        for t in threads:
            t.join()
        s = pool.stats()
    assert not errors
    assert s["hits"] > 1000


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"max_bytes": -1}, ValueError, "max_bytes must be >= 0"),
    ({"min_bytes": 1.5}, TypeError, "min_bytes must be an integer"),
    ({"max_bytes": "1G"}, TypeError, "max_bytes must be an integer"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        memory_pool(**kwargs)


def test_exported_at_top_level():
    assert cnncore.memory_pool is memory_pool
    assert "inactive" in repr(memory_pool())

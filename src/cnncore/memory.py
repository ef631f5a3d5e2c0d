"""Reuse NumPy array memory between training steps: :class:`memory_pool`.

A training step allocates the same array sizes every time (activations, gradients,
workspaces) and frees them again. glibc returns large freed blocks to the kernel (munmap,
or trimming the top of the heap), so the next step faults every 4 KiB page back in: about
a quarter of a LeNet-5 step at batch 64 (1 ms of 4; see "The memory pool" in the user guide,
docs/user_guide/memory.md).
:class:`memory_pool` installs a caching allocator as NumPy's data allocator (NEP 49,
``PyDataMem_SetHandler``) for the duration of a ``with`` block: a freed block of a size is
kept and handed to the next array of the same size, as PyTorch's caching allocator does
for GPU memory. :class:`cnncore.Trainer` uses one in ``fit``, ``evaluate`` and ``predict``.
"""

import operator
from types import TracebackType
from typing import Any, Dict, Optional, Type

import numpy as np

from ._kernels._memory import PoolHandler

_multiarray: Any = getattr(np, "_core", None) or getattr(np, "core")
_multiarray = _multiarray.multiarray

__all__ = ["memory_pool", "pool_active", "DEFAULT_MAX_BYTES", "DEFAULT_MIN_BYTES"]

#: At most this many freed bytes are kept for reuse; beyond it, blocks are freed.
DEFAULT_MAX_BYTES = 1 << 30
#: Smaller arrays are left to the C allocator (it serves them without page faults).
DEFAULT_MIN_BYTES = 16 << 10


_HANDLER_NAME = "cnncore_pool"  # what NumPy's get_handler_name() reports for our pools


def pool_active() -> bool:
    """True when a :class:`memory_pool` is NumPy's allocator in the current context."""
    return bool(_multiarray.get_handler_name() == _HANDLER_NAME)


def _size(where: str, name: str, value: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an integer number of bytes, got "
                        f"{type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{where}: {name} must be >= 0, got {value}")
    return value


class memory_pool:
    """Context manager: NumPy arrays created inside reuse the memory of freed ones.

    Inside ``with cnncore.memory_pool():``, the data of every NumPy array created in this
    thread (NumPy keeps its allocator in a context variable, so other threads and asyncio
    tasks are not affected) comes from a pool. When such an array is freed, its block is
    kept, by exact size (rounded up to 64 bytes), for the next array of that size instead of
    going back to the operating system. On exit the cached blocks are freed; arrays still
    alive stay valid and are freed normally later. Blocks are 64-byte aligned.

    Parameters
    ----------
    max_bytes : int
        Cache at most this many bytes of freed blocks (default 1 GiB); a block that would
        exceed it is freed at once.
    min_bytes : int
        Blocks smaller than this (default 16 KiB) are not cached.

    Examples
    --------
    >>> import numpy as np, cnncore
    >>> with cnncore.memory_pool() as pool:
    ...     for _ in range(3):
    ...         a = np.ones(1 << 20)
    ...         del a
    >>> pool.stats()["hits"]
    2
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES,
                 min_bytes: int = DEFAULT_MIN_BYTES) -> None:
        self.max_bytes = _size("memory_pool", "max_bytes", max_bytes)
        self.min_bytes = _size("memory_pool", "min_bytes", min_bytes)
        self._handler: Optional[PoolHandler] = None
        self._previous: object = None
        self._stats: Optional[Dict[str, int]] = None

    def __enter__(self) -> "memory_pool":
        if self._handler is not None:
            raise RuntimeError("memory_pool: this pool is already in use; create another "
                               "memory_pool() for a nested or concurrent block")
        self._handler = PoolHandler(self.min_bytes, self.max_bytes)
        self._previous = self._handler.activate()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        handler, self._handler = self._handler, None
        if handler is None:
            raise RuntimeError("memory_pool: __exit__ without __enter__")
        self._stats = handler.stats()
        handler.deactivate(self._previous)
        self._previous = None

    def stats(self) -> Dict[str, int]:
        """Counters of the current (or the last finished) ``with`` block.

        Returns
        -------
        dict
            ``hits`` (allocations served from the cache), ``misses`` (allocations of at
            least ``min_bytes`` that found no cached block), ``releases`` (blocks freed
            instead of cached: over ``max_bytes``, outside the block, or too many sizes),
            ``cached_bytes`` (now, or at exit), ``size_classes``.
        """
        if self._handler is not None:
            return dict(self._handler.stats())
        if self._stats is None:
            return {"hits": 0, "misses": 0, "releases": 0, "cached_bytes": 0,
                    "size_classes": 0}
        return dict(self._stats)

    def __repr__(self) -> str:
        state = "active" if self._handler is not None else "inactive"
        return (f"memory_pool(max_bytes={self.max_bytes}, min_bytes={self.min_bytes}) "
                f"[{state}]")

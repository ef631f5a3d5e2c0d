"""Process-wide settings: the default number of threads used by the compiled kernels."""

import numbers
import os
from typing import Optional

_num_threads: Optional[int] = None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def set_num_threads(n: Optional[int]) -> None:
    """Set the default thread count of every parallel kernel (``None`` restores the default).

    The default is ``$CNNCORE_NUM_THREADS`` if set, else the number of usable cores.
    A kernel's own ``n_threads=`` argument overrides it for one call.
    """
    global _num_threads
    if n is not None:
        n = int(n)
        if n < 1:
            raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n


def get_num_threads() -> int:
    """The thread count a kernel uses when called with ``n_threads=None``."""
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("CNNCORE_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"CNNCORE_NUM_THREADS must be a positive integer, got {env!r}")
        if n >= 1:
            return n
        raise ValueError(f"CNNCORE_NUM_THREADS must be a positive integer, got {env!r}")
    return _cpu_count()


def resolve_threads(n_threads: Optional[int], where: str = "cnncore") -> int:
    """``n_threads`` argument of a kernel -> a positive int."""
    if n_threads is None:
        return get_num_threads()
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"{where}: n_threads must be an int or None, got {n_threads!r}")
    n = int(n_threads)
    if n < 1:
        raise ValueError(f"{where}: n_threads must be >= 1 or None, got {n_threads!r}")
    return n

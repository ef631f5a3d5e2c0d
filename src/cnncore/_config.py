"""Process-wide settings: the default number of threads used by the compiled kernels and
the workspace limit of the convolution kernels' scratch memory."""

import numbers
import os
from typing import Optional

_num_threads: Optional[int] = None

# GNU OpenMP (libgomp) cannot start a team of threads in a child process made by fork() once
# the parent has run one (in cnncore or in any library sharing libgomp, e.g. PyTorch): the
# child's first parallel region waits for threads that were not copied, for ever. So in such
# a child every cnncore kernel runs on one thread (PyTorch's DataLoader workers do the same).
# multiprocessing's "spawn" and "forkserver" start methods give workers that can use threads.
forked_child = False


def _after_fork_in_child() -> None:
    global forked_child
    forked_child = True


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def set_num_threads(n: Optional[int]) -> None:
    """Set the default thread count of every parallel kernel (``None`` restores the default).

    The default is ``$CNNCORE_NUM_THREADS`` if set, else the number of usable cores.
    A kernel's own ``n_threads=`` argument overrides it for one call. In a child process
    made by ``os.fork()`` (multiprocessing's default start method on Linux) kernels run on
    one thread whatever is set here: GNU OpenMP cannot start threads there once the parent
    has used them; start workers with ``multiprocessing.get_context("spawn")`` or
    ``"forkserver"`` to give them threads.
    """
    global _num_threads
    if n is not None:
        n = int(n)
        if n < 1:
            raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n


def get_num_threads() -> int:
    """The thread count a kernel uses when called with ``n_threads=None`` (1 in a child
    process made by ``os.fork()``: see :func:`set_num_threads`)."""
    if forked_child:
        return 1
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


# Scratch memory a convolution may use per thread (its tile of the im2col column matrix).
DEFAULT_WORKSPACE_LIMIT = 32 << 20
_workspace_limit: Optional[int] = None


def set_workspace_limit(nbytes: Optional[int]) -> None:
    """Cap the scratch memory each thread of a convolution uses, in bytes (``None`` restores
    the default, 32 MiB).

    im2col + GEMM convolutions work on tiles of output rows whose column matrix
    (``C_in/groups * kh * kw`` x ``rows * W_out`` elements) fits in this limit, so their
    scratch stays bounded whatever the image size. The smallest tile is one output row: if
    even that exceeds the limit, it is used anyway. Results do not depend on the thread
    count, but may differ in the last bits between two limits (the tiles change).
    """
    global _workspace_limit
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
            raise TypeError(f"set_workspace_limit: nbytes must be an int (bytes) or None, "
                            f"got {nbytes!r}")
        if nbytes < 1:
            raise ValueError(f"set_workspace_limit: nbytes must be >= 1, got {nbytes}")
        nbytes = int(nbytes)
    _workspace_limit = nbytes


def get_workspace_limit() -> int:
    """The scratch memory, in bytes, a convolution may use per thread (see
    :func:`set_workspace_limit`)."""
    return DEFAULT_WORKSPACE_LIMIT if _workspace_limit is None else _workspace_limit

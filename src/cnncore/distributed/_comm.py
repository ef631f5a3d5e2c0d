"""The communicator wrapper: deterministic sums, broadcasts, gathers, abort on error.

mpi4py is imported only when a communicator is made (``cnncore`` imports without it).
"""

import os
import sys
import threading
import traceback

import numpy as np

__all__ = ["Communicator", "get_communicator", "install_abort_hook", "shard_bounds"]

_MPI_HINT = ('distributed training needs mpi4py and an MPI library: pip install "cnncore[mpi]" '
             "(mpi4py + the mpich wheel), or build mpi4py against the cluster's MPI "
             "(see docs/user_guide/distributed.md)")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{_MPI_HINT} ({e})") from e
    return MPI


def shard_bounds(n, rank, size):
    """``(lo, hi)``: the contiguous part of ``range(n)`` that ``rank`` of ``size`` owns.

    ``lo = rank * n // size``: the shares differ by at most one, and concatenating them in
    rank order gives ``range(n)`` back (a rank may get nothing when ``n < size``).
    """
    return rank * n // size, (rank + 1) * n // size


class Communicator:
    """A thin wrapper of an mpi4py communicator with the collectives the Trainer needs.

    Every collective here is *deterministic*: sums are taken in rank order 0, 1, ..., n-1 by
    NumPy on this process, never by the MPI library (whose ``Allreduce`` may pick a
    different reduction tree from one call or run to the next), so repeated runs with the
    same number of ranks are bit-identical.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.
    """

    def __init__(self, comm=None):
        MPI = _mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"Communicator: expected an mpi4py communicator, got "
                            f"{type(comm).__name__}")
        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def __repr__(self):
        return f"Communicator(rank={self.rank}, size={self.size})"

    # ------------------------------------------------------------------ basics
    def barrier(self):
        self.comm.Barrier()

    def bcast(self, obj, root=0):
        """A picklable object from ``root`` to every rank (small things: configs, states)."""
        if self.size == 1:
            return obj
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj):
        """A list of every rank's (picklable, small) ``obj``, in rank order."""
        if self.size == 1:
            return [obj]
        return self.comm.allgather(obj)

    def bcast_array_(self, array, root=0):
        """Overwrite a contiguous array in place with root's (same shape and dtype)."""
        if self.size > 1:
            if not array.flags.c_contiguous:
                raise ValueError("bcast_array_: the array must be C-contiguous")
            self.comm.Bcast(array, root=root)
        return array

    def abort(self, code=1):
        """End every process of the job now (``MPI_Abort``)."""
        self.comm.Abort(code)

    def local_size(self):
        """Number of ranks on this machine (shared-memory node)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return node.Get_size()
        finally:
            node.Free()

    # ------------------------------------------------------------------ reductions
    def allreduce_sum_(self, buf):
        """Sum a 1-D contiguous float array over the ranks, in place, in rank order.

        Reduce-scatter by direct exchange, then allgather: the array is cut into ``size``
        chunks; chunk ``c`` of every rank is sent to rank ``c`` (``Alltoallv``), which adds
        the ``size`` pieces in rank order; the summed chunks are then gathered by everyone
        (``Allgatherv``). MPI only moves bytes; the arithmetic is ours, in a fixed order.
        Each rank sends and receives ``2 (n - 1) / n`` times the array's bytes, the volume
        of a ring allreduce.
        """
        if self.size == 1:
            return buf
        if buf.ndim != 1 or not buf.flags.c_contiguous:
            raise ValueError("allreduce_sum_: expected a 1-D C-contiguous array")
        n, size, rank = buf.size, self.size, self.rank
        bounds = np.array([r * n // size for r in range(size + 1)])
        counts, displs = np.diff(bounds), bounds[:-1]
        k = int(counts[rank])
        pieces = np.empty((size, k), dtype=buf.dtype)
        self.comm.Alltoallv([buf, (counts, displs)],
                            [pieces, ([k] * size, [k * r for r in range(size)])])
        acc = pieces[0]
        for r in range(1, size):  # rank order, always
            acc += pieces[r]
        self.comm.Allgatherv(acc, [buf, (counts, displs)])
        return buf

    def _layout(self, n):
        bounds = np.array([r * n // self.size for r in range(self.size + 1)])
        counts, displs = np.diff(bounds), bounds[:-1]
        return counts, displs, int(counts[self.rank])

    def start_allreduce_sum(self, buf):
        """Start :meth:`allreduce_sum_` without waiting (its non-blocking reduce-scatter
        exchange); returns what :meth:`finish_allreduce_sum_` needs. ``buf`` must not
        change in between."""
        counts, displs, k = self._layout(buf.size)
        pieces = np.empty((self.size, k), dtype=buf.dtype)
        req = self.comm.Ialltoallv([buf, (counts, displs)],
                                   [pieces, ([k] * self.size, [k * r for r in range(self.size)])])
        return req, pieces

    def finish_allreduce_sum_(self, buf, req, pieces):
        """Complete a sum started by :meth:`start_allreduce_sum` (same arithmetic)."""
        counts, displs, _ = self._layout(buf.size)
        req.Wait()
        acc = pieces[0]
        for r in range(1, self.size):  # rank order, always
            acc += pieces[r]
        self.comm.Allgatherv(acc, [buf, (counts, displs)])
        return buf

    def progress(self, requests):
        """Let MPI move data of pending non-blocking operations (MPICH progresses them only
        inside MPI calls unless an asynchronous progress thread is enabled)."""
        if requests:
            self.MPI.Request.Testall(requests)

    def sum_scalars(self, *values):
        """The rank-order sums (float64) of a few numbers, as a tuple."""
        a = np.array(values, dtype=np.float64)
        self.allreduce_sum_(a)
        return tuple(float(v) for v in a)

    def allgather_rows(self, local):
        """Concatenate every rank's ``local`` array along axis 0, in rank order (every rank
        gets the whole array). ``local`` may be None on a rank that has no rows."""
        if self.size == 1:
            return local
        meta = (None if local is None else (local.shape, local.dtype.str))
        metas = self.allgather(meta)
        known = [m for m in metas if m is not None]
        if not known:
            return None
        tail, dtype = known[0][0][1:], np.dtype(known[0][1])
        rows = [0 if m is None else m[0][0] for m in metas]
        if local is None:
            local = np.empty((0,) + tuple(tail), dtype=dtype)
        local = np.ascontiguousarray(local, dtype=dtype)
        row = int(np.prod(tail, dtype=np.int64))
        out = np.empty((sum(rows),) + tuple(tail), dtype=dtype)
        counts = np.array(rows) * row
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.comm.Allgatherv(local.reshape(-1), [out.reshape(-1), (counts, displs)])
        return out


def get_communicator(distributed):
    """``None`` -> None; ``"mpi"`` -> COMM_WORLD; an mpi4py communicator or a
    :class:`Communicator` -> wrapped."""
    if distributed is None or distributed is False:
        return None
    if isinstance(distributed, Communicator):
        return distributed
    if isinstance(distributed, str):
        if distributed.lower() != "mpi":
            raise ValueError(f"distributed must be None, 'mpi' or an mpi4py communicator, "
                             f"got {distributed!r}")
        return Communicator()
    return Communicator(distributed)


_hooked = set()


def install_abort_hook(comm):
    """Make an uncaught exception on this rank end the whole job (``MPI_Abort``) instead
    of leaving the other ranks waiting in a collective forever.

    The traceback is printed first, each line prefixed with ``[rank r]``, then
    ``MPI_Abort`` ends every rank (mpiexec / srun report the exit). Replaces
    ``sys.excepthook`` and ``threading.excepthook``; installing twice for the same
    communicator does nothing. A no-op with one rank. An exception that the program
    catches itself is not seen here.
    """
    comm = get_communicator(comm) if not isinstance(comm, Communicator) else comm
    if comm.size == 1 or id(comm.comm) in _hooked:
        return
    _hooked.add(id(comm.comm))
    rank, previous_thread = comm.rank, threading.excepthook

    def report(exc_type, exc, tb):
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        lines = [f"[rank {rank}] {line}" for line in text.rstrip().splitlines()]
        lines.append(f"[rank {rank}] cnncore.distributed: aborting all {comm.size} ranks "
                     f"({exc_type.__name__})")
        try:
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - stderr closed
            pass
        try:
            sys.stdout.flush()
        except Exception:  # pragma: no cover
            pass
        comm.abort(1)
        os._exit(1)  # pragma: no cover - Abort does not return

    def hook(exc_type, exc, tb):
        report(exc_type, exc, tb)

    def thread_hook(args):
        if args.exc_type is SystemExit:
            return previous_thread(args)
        report(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = hook
    threading.excepthook = thread_hook

"""Data-parallel training across processes and machines on MPI (through mpi4py).

``Trainer(model, loss, optimizer, distributed="mpi")`` and launch every rank with the same
script: ``mpiexec -n 4 python train.py``. Each rank computes its contiguous slice of every
global batch; the gradients are summed over the ranks before each optimiser step, so all
ranks keep the same weights. See docs/user_guide/distributed.md.

mpi4py is imported only when a communicator is made (``pip install "cnncore[mpi]"``).

Public API
----------
Communicator(comm=None)
    Wrapper of an mpi4py communicator with deterministic (rank-order) sums.
get_communicator(distributed)
    ``None`` / ``"mpi"`` / an mpi4py communicator -> None or a Communicator.
install_abort_hook(comm)
    An uncaught exception on one rank aborts the whole job (MPI_Abort).
shard_bounds(n, rank, size)
    The contiguous share of ``range(n)`` of one rank.
default_threads(comm)
    Cores of this machine divided by the ranks running on it (at least 1).
GradientReducer, DistributedContext
    What the Trainer uses (bucketed gradient sums; the per-Trainer state).
"""

from ._comm import Communicator, get_communicator, install_abort_hook, shard_bounds
from ._trainer import DEFAULT_BUCKET_BYTES, DistributedContext, GradientReducer

__all__ = ["Communicator", "get_communicator", "install_abort_hook", "shard_bounds",
           "default_threads", "GradientReducer", "DistributedContext", "DEFAULT_BUCKET_BYTES"]


def default_threads(comm):
    """Kernel threads per rank that do not oversubscribe the machine: usable cores divided
    by the number of ranks on this machine (at least 1)."""
    from .._config import _cpu_count
    comm = get_communicator(comm) if not isinstance(comm, Communicator) else comm
    return max(1, _cpu_count() // comm.local_size())

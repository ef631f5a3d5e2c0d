"""Compiled kernels (Cython + OpenMP). Call them through :mod:`cnncore.functional`,
which validates arguments; these functions assume valid, C-contiguous inputs.

OpenMP wait policy
------------------
Between parallel regions, libgomp's idle worker threads spin for a while (about 300,000
iterations) before they sleep. On an idle machine that saves a few microseconds per region;
when another process wants the same cores it is a disaster: the spinning workers take the
CPU that the working thread (or the other process) needs, and a region waits a whole
scheduler time slice for a descheduled team member. Measured on 2 cores with other jobs
running, a LeNet-5 training step at batch 64 took 90-200 ms (p90 390-615 ms) at 2 threads
against 16-28 ms at 1 thread; with ``OMP_WAIT_POLICY=passive`` the same steps took
9.6-15.8 ms at 2 threads and 7-12 ms at 1 thread.

So cnncore loads its OpenMP runtime with ``OMP_WAIT_POLICY=passive`` unless the user chose
a policy (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set) or asks for another one with
``CNNCORE_OMP_WAIT_POLICY=active|passive|default`` (``default``: leave the runtime's own).
The variable is set only while the runtime loads and removed again, so that child processes
do not inherit it. libgomp reads it once, when it is loaded, and a process has one libgomp
per soname: PyTorch's Linux wheels bundle a ``libgomp.so.1`` that the dynamic linker then
shares with cnncore, so whichever of the two is imported first decides the policy for both
(:data:`WAIT_POLICY` and ``cnncore.show_config()`` say when cnncore came second).
"""

import os
import sys

#: How the OpenMP runtime's wait policy was chosen: ``requested`` (``'passive'``,
#: ``'active'``, or None when the runtime's default or the user's own variables apply),
#: ``source`` (where the choice came from) and ``applied`` (False when the runtime was
#: already loaded, so the request could not take effect; None where this cannot be told).
WAIT_POLICY = {"requested": None, "source": "", "applied": None}


def _runtime_loaded():
    """Whether libgomp is already mapped into this process (Linux only; else None)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return None


def _load_openmp_runtime():
    choice = os.environ.get("CNNCORE_OMP_WAIT_POLICY", "passive").strip().lower()
    user = [v for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if v in os.environ]
    if user:
        WAIT_POLICY.update(source=f"the user's {', '.join(user)}")
    elif choice in ("", "default"):
        WAIT_POLICY.update(source="the OpenMP runtime's default")
    elif choice not in ("active", "passive"):
        raise ValueError(f"CNNCORE_OMP_WAIT_POLICY must be 'active', 'passive' or 'default', "
                         f"got {choice!r}")
    else:
        loaded = _runtime_loaded() if sys.platform.startswith("linux") else None
        WAIT_POLICY.update(requested=choice, source="cnncore (CNNCORE_OMP_WAIT_POLICY)",
                           applied=None if loaded is None else not loaded)
        os.environ["OMP_WAIT_POLICY"] = choice
    try:
        from . import _openmp_helpers  # noqa: F401  (loads and initialises the runtime)
    finally:
        if WAIT_POLICY["requested"] is not None:
            del os.environ["OMP_WAIT_POLICY"]


_load_openmp_runtime()

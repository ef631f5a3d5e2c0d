"""Compiled kernels (Cython + OpenMP). Call them through :mod:`cnncore.functional`,
which validates arguments; these functions assume valid, C-contiguous inputs.

OpenMP wait policy
------------------
Between parallel regions, libgomp's idle worker threads spin (about 300,000 iterations by
default) before they sleep. On an idle machine that saves the wake-up of a sleeping thread
at the next region; when another process wants the same cores it is a disaster: the
spinning workers take the CPU that the working thread (or the other process) needs, and a
region waits a whole scheduler time slice for a descheduled team member. Sleeping at once
(``OMP_WAIT_POLICY=passive``) pays that wake-up at every region instead.

Measured on 2 cores, LeNet-5 training step at batch 64 (median, p90) at 2 threads:

==========================  ==================  ==========================  ==================
policy                      idle machine        2 busy loops beside it      6 busy jobs beside
==========================  ==================  ==========================  ==================
libgomp's default (active)  1.98 ms             6.3 ms (p90 41 ms)          90-200 ms (p90 615)
``GOMP_SPINCOUNT=1000``     2.26 ms             5.1 ms (p90 5.2 ms)         -
``passive``                 3.51 ms             3.8 ms (p90 4.3 ms)         10-16 ms
==========================  ==================  ==========================  ==================

and ResNet-18 inference at batch 1 (224x224), 1 -> 2 threads on the idle machine: 1.86x
(default), 1.77x (spin 1000), 1.41x (passive). So cnncore loads its OpenMP runtime with a
brief spin, ``GOMP_SPINCOUNT=1000`` (a few microseconds, then sleep): within 15 % of the
default when idle, and it degrades gently when the cores are shared. The user's own
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins; ``CNNCORE_OMP_WAIT_POLICY=brief|active|passive|default``
chooses another (``default``: leave the runtime's own).

The variable is set only while the runtime loads and removed again, so that child processes
do not inherit it. libgomp reads it once, when it is loaded, and a process has one libgomp
per soname: PyTorch's Linux wheels bundle a ``libgomp.so.1`` that the dynamic linker then
shares with cnncore, so whichever of the two is imported first decides the policy for both
(:data:`WAIT_POLICY` and ``cnncore.show_config()`` say when cnncore came second).
"""

import os
import sys

#: How the OpenMP runtime's wait policy was chosen: ``requested`` (``'brief'``,
#: ``'passive'``, ``'active'``, or None when the runtime's default or the user's own variables apply),
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


#: What each CNNCORE_OMP_WAIT_POLICY choice sets while the runtime loads.
_CHOICES = {"brief": ("GOMP_SPINCOUNT", "1000"), "active": ("OMP_WAIT_POLICY", "active"),
            "passive": ("OMP_WAIT_POLICY", "passive")}


def _load_openmp_runtime():
    choice = os.environ.get("CNNCORE_OMP_WAIT_POLICY", "brief").strip().lower()
    user = [v for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if v in os.environ]
    if user:
        WAIT_POLICY.update(source=f"the user's {', '.join(user)}")
    elif choice in ("", "default"):
        WAIT_POLICY.update(source="the OpenMP runtime's default")
    elif choice not in _CHOICES:
        raise ValueError(f"CNNCORE_OMP_WAIT_POLICY must be 'brief', 'active', 'passive' or "
                         f"'default', got {choice!r}")
    else:
        loaded = _runtime_loaded() if sys.platform.startswith("linux") else None
        WAIT_POLICY.update(requested=choice, source="cnncore (CNNCORE_OMP_WAIT_POLICY)",
                           applied=None if loaded is None else not loaded)
        variable, value = _CHOICES[choice]
        os.environ[variable] = value
    try:
        from . import _openmp_helpers  # noqa: F401  (loads and initialises the runtime)
    finally:
        if WAIT_POLICY["requested"] is not None:
            del os.environ[_CHOICES[WAIT_POLICY["requested"]][0]]


_load_openmp_runtime()

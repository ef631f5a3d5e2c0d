"""Timing helpers: warm-up, repeats, and the median / min / max summary."""

import statistics
import time

__all__ = ["summarize", "time_call", "minor_faults"]


def summarize(times):
    """Summary statistics of a list of durations.

    Parameters
    ----------
    times : sequence of float
        Durations in seconds (at least one).

    Returns
    -------
    dict
        ``median``, ``min``, ``max``, ``mean`` (seconds), ``n`` and ``times`` (the list).
        The median of an even number of samples is the mean of the two middle ones.
    """
    times = [float(t) for t in times]
    if not times:
        raise ValueError("summarize: need at least one time")
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "mean": statistics.fmean(times), "n": len(times), "times": times}


def minor_faults():
    """Minor page faults of this process so far (None where ``resource`` is missing).

    Every first touch of freshly ``mmap``-ed memory (large NumPy arrays allocated per call)
    costs one fault per 4 KiB page, which shows in the timings of allocation-heavy code.
    """
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_call(fn, warmup, repeats, clock=time.perf_counter, faults=minor_faults):
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times, each timed alone.

    Parameters
    ----------
    fn : callable
        Takes no argument; its inputs must be created beforehand, outside the timed region.
    warmup, repeats : int
        ``repeats`` >= 1.
    clock : callable
        The time source (``time.perf_counter``).
    faults : callable or None
        Counter read before and after the timed calls (:func:`minor_faults`); its change
        per call is stored as ``minor_faults_per_call`` (None when unavailable).

    Returns
    -------
    summary : dict
        :func:`summarize` of the timed calls, plus ``minor_faults_per_call``.
    result : object
        What the last call returned (for correctness checks outside the timed region).
    """
    if repeats < 1:
        raise ValueError(f"time_call: repeats must be >= 1, got {repeats}")
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    times = []
    f0 = faults() if faults else None
    for _ in range(repeats):
        t0 = clock()
        result = fn()
        times.append(clock() - t0)
    f1 = faults() if faults else None
    summary = summarize(times)
    summary["minor_faults_per_call"] = None if f0 is None or f1 is None else (f1 - f0) / repeats
    return summary, result

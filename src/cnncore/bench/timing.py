"""Timing helpers: warm-up, repeats, and the median / min / max summary; for the
whole-network rows (:mod:`cnncore.bench.models`) a block with a time budget
(:func:`time_budgeted`) and interleaved rounds of several implementations
(:func:`time_interleaved`)."""

import statistics
import time

__all__ = ["summarize", "time_call", "minor_faults", "time_budgeted", "time_interleaved"]


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


def time_budgeted(fn, warmup, repeats, budget, min_repeats=1, clock=time.perf_counter,
                  faults=minor_faults):
    """As :func:`time_call`, but the timed calls stop once they have taken ``budget``
    seconds and at least ``min_repeats`` ran (``summary["cut"]``: fewer than ``repeats``)."""
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    times = []
    f0 = faults() if faults else None
    for _ in range(max(1, repeats)):
        t0 = clock()
        result = fn()
        times.append(clock() - t0)
        if len(times) >= min_repeats and sum(times) >= budget and len(times) < repeats:
            break
    f1 = faults() if faults else None
    s = summarize(times)
    s["cut"] = len(times) < repeats
    s["minor_faults_per_call"] = None if f0 is None or f1 is None else (f1 - f0) / len(times)
    return s, result


def time_interleaved(fns, repeats, budget, min_repeats=1, pause=0.0, rewarm=1,
                     clock=time.perf_counter, sleep=time.sleep, faults=minor_faults,
                     min_time=0.0, max_repeats=100):
    """Time several implementations in interleaved rounds, so that all of them see the same
    machine speed (a shared host drifts by tens of percent within a minute).

    Each round runs every ``fns`` entry in the dict's order: ``rewarm`` untimed calls, then
    one call timed alone, back to back, then ``pause`` seconds of sleep. The untimed calls
    absorb what the switch costs the first call after another implementation: the other
    runtime's OpenMP workers still spinning, caches holding the other's data, parked
    threads waking up (a pause instead of them let the threads park and slowed PyTorch's
    batch-1 calls up to 2.7x: DenseNet-121 CIFAR 13 -> 39 ms, cnncore's 1.7x), so the timed
    call measures the steady state that block timings see. The caller warms each
    implementation up beforehand as well.

    Parameters
    ----------
    fns : dict
        ``{name: fn}``, ``fn`` taking no argument.
    repeats : int
        At most this many rounds (at least 1).
    budget : float
        Seconds per implementation: the rounds stop once the summed times of all the timed
        calls so far exceed ``budget * len(fns)`` (pauses not counted) and at least
        ``min_repeats`` rounds ran.
    min_repeats : int
    pause : float
        Sleep after every timed call, in seconds (0: none).
    rewarm : int
        Untimed calls of an implementation just before each of its timed calls.
    min_time : float
        Short calls get more rounds: past ``repeats``, rounds go on (up to ``max_repeats``)
        while some implementation's timed calls sum to less than ``min_time`` seconds. A
        median of 3 calls of a few milliseconds moved by 30 % between runs (LeNet-5's
        training step: 0.59 and 1.22 of PyTorch's time in two quick runs).
    max_repeats : int
    clock, sleep, faults : callable
        Time source, sleep function and page-fault counter (:func:`minor_faults`, read just
        before and after each call, outside its timed region; None: not counted).

    Returns
    -------
    summaries : dict
        ``{name: summary}``: :func:`summarize` of that implementation's own calls, plus
        ``cut`` (fewer than ``repeats`` rounds), ``rounds`` and ``minor_faults_per_call`` (the faults
        counted around its own calls only, per call; None when unavailable).
    results : dict
        ``{name: what its last call returned}``.
    """
    if not fns:
        raise ValueError("time_interleaved: no implementation to time")
    repeats = max(1, repeats)
    times = {name: [] for name in fns}
    nfaults = {name: 0 for name in fns}
    results = {}
    total = 0.0
    rounds = 0
    while rounds < repeats or (rounds < max_repeats
                               and min(sum(t) for t in times.values()) < min_time):
        for name, fn in fns.items():
            for _ in range(max(0, rewarm)):
                fn()
            f0 = faults() if faults else None
            t0 = clock()
            results[name] = fn()
            dt = clock() - t0
            f1 = faults() if faults else None
            times[name].append(dt)
            total += dt
            if f0 is None or f1 is None or nfaults[name] is None:
                nfaults[name] = None
            else:
                nfaults[name] += f1 - f0
            if pause > 0:
                sleep(pause)
        rounds += 1
        if rounds >= min_repeats and total > budget * len(fns):
            break
    out = {}
    for name in fns:
        s = summarize(times[name])
        s["cut"] = rounds < repeats
        s["rounds"] = rounds
        s["minor_faults_per_call"] = None if nfaults[name] is None else nfaults[name] / rounds
        out[name] = s
    return out, results

"""This machine's floating-point peak, estimated two ways.

1. **Measured**: the best GFLOP/s of a large NumPy matrix product (``sgemm`` for float32,
   ``dgemm`` for float64) with BLAS limited to the benchmark's thread count.
2. **Theoretical**: ``cores x GHz x SIMD lanes x FMA units x 2`` from ``/proc/cpuinfo``,
   with the assumptions spelled out (see :func:`theoretical_peak`).
"""

import os
import platform
import re
import shutil
import subprocess
import time

import numpy as np

__all__ = ["parse_cpuinfo", "parse_lscpu_max_mhz", "simd_lanes", "theoretical_peak",
           "measured_gemm_peak", "cpu_info", "load_average", "CpuMonitor"]


def parse_cpuinfo(text):
    """Parse the text of ``/proc/cpuinfo``.

    Parameters
    ----------
    text : str

    Returns
    -------
    dict
        ``model`` (str or None), ``vendor``, ``family`` (int or None), ``logical_cpus``,
        ``physical_cores`` (distinct ``(physical id, core id)`` pairs; the logical count when
        the file does not say), ``mhz`` (float of the first ``cpu MHz`` line, or None) and
        ``flags`` (sorted list).
    """
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    logical = 0
    cores = set()
    model = vendor = mhz = family = None
    flags = set()
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
        if "processor" not in fields:
            continue
        logical += 1
        model = model or fields.get("model name") or fields.get("cpu model")
        vendor = vendor or fields.get("vendor_id")
        if family is None and fields.get("cpu family", "").isdigit():
            family = int(fields["cpu family"])
        if mhz is None and fields.get("cpu mhz"):
            try:
                mhz = float(fields["cpu mhz"])
            except ValueError:
                pass
        if not flags:
            flags = set((fields.get("flags") or fields.get("features") or "").split())
        if "physical id" in fields and "core id" in fields:
            cores.add((fields["physical id"], fields["core id"]))
    return {"model": model, "vendor": vendor, "family": family, "logical_cpus": logical,
            "physical_cores": len(cores) or logical, "mhz": mhz, "flags": sorted(flags)}


def parse_lscpu_max_mhz(text):
    """The ``CPU max MHz`` of ``lscpu`` output, or None when it is not given (VMs)."""
    m = re.search(r"^CPU max MHz:\s*([0-9.]+)", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def simd_lanes(flags, dtype=np.float32):
    """SIMD lanes per vector FMA and whether FMA exists, from the CPU flags.

    ``avx512f`` -> 16 float32 lanes, ``avx2`` + ``fma`` -> 8, ``avx`` -> 8 (no FMA),
    ``sse2`` -> 4 (no FMA), anything else -> 4 (e.g. ARM NEON ``asimd``, counted with FMA).
    float64 has half the lanes.

    Returns
    -------
    lanes : int
    has_fma : bool
    isa : str
    """
    flags = set(flags)
    if "avx512f" in flags:
        lanes, fma, isa = 16, True, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, fma, isa = 8, True, "AVX2+FMA"
    elif "avx" in flags:
        lanes, fma, isa = 8, False, "AVX"
    elif "sse2" in flags:
        lanes, fma, isa = 4, False, "SSE2"
    else:
        lanes, fma, isa = 4, True, "unknown (4 lanes with FMA assumed)"
    if np.dtype(dtype) == np.float64:
        lanes //= 2
    return lanes, fma, isa


def theoretical_peak(info, threads, dtype=np.float32, mhz=None):
    """Peak GFLOP/s = cores x GHz x lanes x FMA units x 2 flops per FMA.

    Parameters
    ----------
    info : dict
        From :func:`parse_cpuinfo`.
    threads : int
        Cores used: ``min(threads, physical cores)`` (SMT siblings share the FMA units).
    dtype : float32 or float64
    mhz : float, optional
        Clock to use instead of ``info["mhz"]`` (e.g. lscpu's max MHz).

    Returns
    -------
    gflops : float or None
        None when the clock is unknown.
    assumptions : str
    """
    lanes, has_fma, isa = simd_lanes(info["flags"], dtype)
    clock = mhz or info.get("mhz")
    cores = max(1, min(int(threads), info.get("physical_cores") or 1))
    units = 2
    per_cycle = lanes * units * 2  # 2 FMA pipes x 2 flops, or 1 add + 1 mul pipe x 1 flop
    if not has_fma:
        per_cycle = lanes * 2
    name = np.dtype(dtype).name
    if has_fma:
        how = f"{isa}: {lanes} {name} lanes x 2 FMA units x 2 flops"
    else:
        how = f"{isa}: {lanes} {name} lanes x (1 add + 1 mul) per cycle"
    if clock is None:
        return None, f"{how}; clock unknown"
    text = f"{cores} core(s) x {clock / 1000:.2f} GHz x {how} = {per_cycle} flops/cycle/core"
    if (info.get("vendor") == "AuthenticAMD" and info.get("family") == 25
            and "avx512f" in info["flags"]):
        text += ("; note: AMD Zen 4 runs AVX-512 on 256-bit units, so its real peak is "
                 "about half this")
    if mhz is None:
        text += " (clock: /proc/cpuinfo 'cpu MHz', boost not included)"
    return cores * clock / 1000 * per_cycle, text


def measured_gemm_peak(threads, n=4096, dtype=np.float32, repeats=3):
    """Best GFLOP/s of an ``n x n`` NumPy matrix product, BLAS limited to ``threads``.

    Returns
    -------
    dict
        ``gflops`` (best of ``repeats`` after one warm-up), ``n``, ``seconds`` (all times)
        and ``blas`` (the library NumPy uses, from threadpoolctl).
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype=dtype)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=c)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
    libs = [f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
            if i.get("user_api") == "blas" and "numpy" in (i.get("filepath") or "")]
    return {"gflops": 2.0 * n ** 3 / min(times) / 1e9, "n": n, "seconds": times,
            "blas": libs[0] if libs else "unknown", "dtype": np.dtype(dtype).name}


def cpu_info():
    """Parsed ``/proc/cpuinfo`` plus ``lscpu``'s max MHz (None when unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = parse_cpuinfo(f.read())
    except OSError:
        n = os.cpu_count() or 1
        info = {"model": platform.processor() or None, "vendor": None, "family": None,
                "logical_cpus": n, "physical_cores": n, "mhz": None, "flags": []}
    info["max_mhz"] = None
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                                 env={**os.environ, "LC_ALL": "C"}).stdout
            info["max_mhz"] = parse_lscpu_max_mhz(out)
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def load_average():
    """The 1-minute load average, or None (another busy process skews every timing)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _system_busy_seconds():
    """CPU seconds all CPUs have spent busy since boot, from ``/proc/stat`` (None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:9]] + [0] * max(0, 9 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMonitor:
    """How much CPU *other* processes used while we measured.

    ``snapshot()`` before and after a measurement; ``other_share(a, b)`` is the fraction of
    all CPUs' time in between that was busy but not spent by this process (all its threads)
    or by the children it waited for (the memory measurements' subprocesses): 0 on an idle
    machine, 0.5 when other processes kept half the CPUs busy. None where ``/proc/stat``
    does not exist. The resolution is the kernel's clock tick (10 ms).
    """

    def __init__(self):
        self.ncpu = os.cpu_count() or 1
        self.available = _system_busy_seconds() is not None

    def snapshot(self):
        t = os.times()
        return (time.perf_counter(), _system_busy_seconds(),
                t.user + t.system + t.children_user + t.children_system)

    def other_share(self, a, b):
        if not self.available or a[1] is None or b[1] is None:
            return None
        wall = b[0] - a[0]
        if wall <= 0:
            return 0.0
        other = (b[1] - a[1]) - (b[2] - a[2])
        return min(1.0, max(0.0, other / (wall * self.ncpu)))

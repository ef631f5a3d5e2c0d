"""Peak memory of one LeNet-5 training step, each implementation in a fresh subprocess.

For every implementation (``cnncore`` = :mod:`cnncore.functional`, ``layers`` =
:mod:`cnncore.layers`, ``reference`` = the NumPy reference, ``torch`` = ``torch.nn``) a new
Python process (``python -m cnncore.bench.memory IMPL BATCH ...``) imports only what that
implementation needs, builds the model and the batch (:mod:`cnncore.bench.lenet`) and then:

1. reads its resident set size (``VmRSS`` in ``/proc/self/status``): ``rss_built``;
2. runs one warm-up step, collects garbage and reads the RSS again: ``rss_base``. The
   difference is ``retained_mb``, what the first step leaves behind: kept scratch buffers,
   gradients, libraries' lazily created thread pools and buffers;
3. resets the peak RSS (``VmHWM``; writing ``5`` to ``/proc/self/clear_refs``), runs
   ``steps`` steps and reads the peak: ``step_mb = peak - rss_base``, the working memory of
   a step (memory it allocates and frees again);
4. for the NumPy-based implementations, runs one step under :mod:`tracemalloc` (so that
   every live array is traced), then ``steps`` more: ``tracemalloc_mb`` is the peak of the
   traced memory above its level at their start, a cross-check of ``step_mb`` that ignores
   the allocator's and the kernel's page handling. NumPy reports its array buffers to
   tracemalloc; PyTorch's allocator does not, so torch has no tracemalloc figure.

``total_mb = peak - rss_built`` is what the steps add to the process, first-step leftovers
included, and ``faults_per_step`` the minor page faults per measured step. The split between
``step_mb`` and ``retained_mb`` depends on the C allocator: glibc hands freed memory at the
top of its heap back to the system (and maps large blocks afresh), so a step whose arrays
are freed at its end maps and faults them in again in the next one (a large ``step_mb``,
a small ``retained_mb``), while memory pinned below live blocks stays resident between steps
(the other way round). Compare ``total_mb`` as well as ``step_mb``.

Where the peak RSS cannot be reset, ``hwm_reset`` is False: on Linux (``clear_refs`` not
writable) ``step_mb`` is then the lifetime peak above ``rss_base``, an upper bound (import
and warm-up peaks included); elsewhere (no ``/proc``) every reading is ``ru_maxrss``, the
lifetime peak, and ``step_mb`` its growth over the steps, a lower bound.

``python -m cnncore.bench --ops memory`` prints these figures; :func:`measure` returns one.
"""

import gc
import json
import os
import site
import subprocess
import sys

__all__ = ["IMPLS", "measure", "memory_row"]

#: Implementations, in table order.
IMPLS = ("cnncore", "layers", "reference", "torch")

_KB = 1024.0
_KEEP = []  # objects that must live as long as the process


def _status_kb(field, path="/proc/self/status"):
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``; or of ``path``, e.g.
    ``MemAvailable`` of ``/proc/meminfo``), or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kb():
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform == "darwin" else kb  # bytes on macOS


def _reset_peak():
    """Reset this process's peak RSS (Linux >= 4.0); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _build_step(impl, batch, threads, dtype, seed, memory_pool=True):
    """The zero-argument step function of one implementation (imports happen here); the
    NumPy-based ones run inside :class:`cnncore.memory_pool` for the rest of the process
    when ``memory_pool``, as ``Trainer.fit`` runs them."""
    import numpy as np

    from . import lenet
    dtype = np.dtype(dtype)
    x, labels = lenet.make_batch(batch, dtype, seed)
    params = lenet.init_params(dtype, seed)
    if impl == "torch":
        import torch
        torch.set_num_threads(threads)
        return lenet.torch_step(torch, params, x, labels)
    import cnncore
    from .. import functional
    cnncore.set_num_threads(threads)
    if memory_pool:
        pool = cnncore.memory_pool()
        pool.__enter__()  # never left: the process ends after the measurement
        _KEEP.append(pool)
    if impl == "cnncore":
        return lenet.functional_step(functional, params, x, labels, n_threads=threads)
    if impl == "layers":
        layers = lenet.layers_available()
        if layers is None:
            raise RuntimeError("cnncore.layers lacks the LeNet-5 layer classes")
        return lenet.layers_step(layers, functional, params, x, labels)
    if impl == "reference":
        from threadpoolctl import threadpool_limits

        from .. import reference
        # NumPy's BLAS at `threads`, as in the timed run, for the rest of this process.
        _KEEP.append(threadpool_limits(limits=threads, user_api="blas"))
        return lenet.functional_step(reference, params, x, labels)
    raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")


def measure_here(impl, batch, steps=5, threads=1, dtype="float32", seed=0, memory_pool=True):
    """Measure in this process (meant for a fresh one: see :func:`measure`); returns a dict
    of MB figures (``step_mb``, ``retained_mb``, ``total_mb``, ``tracemalloc_mb``, ...)."""
    from .timing import minor_faults
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    step = _build_step(impl, batch, threads, dtype, seed, memory_pool)
    linux = _status_kb("VmRSS") is not None
    rss_built = _status_kb("VmRSS") if linux else _maxrss_kb()
    loss = step()  # warm-up
    gc.collect()
    rss_base = _status_kb("VmRSS") if linux else _maxrss_kb()
    reset = linux and _reset_peak()
    faults = minor_faults()
    for _ in range(steps):
        step()
    peak = _status_kb("VmHWM") if linux else _maxrss_kb()
    faults = None if faults is None else (minor_faults() - faults) / steps
    out = {"impl": impl, "batch": batch, "steps": steps, "threads": threads, "dtype": dtype,
           "first_loss": float(loss), "hwm_reset": bool(reset),
           "rss_built_mb": rss_built / _KB, "rss_base_mb": rss_base / _KB,
           "peak_mb": peak / _KB, "retained_mb": (rss_base - rss_built) / _KB,
           "step_mb": max(0.0, peak - rss_base) / _KB,
           "total_mb": max(0.0, peak - rss_built) / _KB, "faults_per_step": faults,
           "tracemalloc_mb": None, "memory_pool": bool(memory_pool) and impl != "torch"}
    if impl != "torch":  # torch's allocator does not report to tracemalloc
        import tracemalloc
        tracemalloc.start()
        try:
            step()  # every array alive from here on is traced
            gc.collect()
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for _ in range(steps):
                step()
            out["tracemalloc_mb"] = (tracemalloc.get_traced_memory()[1] - start) / 2**20
        finally:
            tracemalloc.stop()
    return out


def _child_env():
    """The environment of a child that must import the same cnncore as this process: an
    installed cnncore needs nothing; a source tree on ``sys.path`` is passed on."""
    import cnncore
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(cnncore.__file__)))
    try:
        installed = set(site.getsitepackages() + [site.getusersitepackages()])
    except AttributeError:  # some virtualenvs' site module
        installed = set()
    if root not in {os.path.abspath(p) for p in installed}:
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([root] + rest)
    return env


def measure(impl, batch, steps=5, threads=1, dtype="float32", seed=0, timeout=600,
            memory_pool=True):
    """Run :func:`measure_here` in a fresh ``python -m cnncore.bench.memory`` process and
    return its dict; raises RuntimeError with the child's error output if it fails."""
    cmd = [sys.executable, "-m", "cnncore.bench.memory", impl, str(batch),
           "--steps", str(steps), "--threads", str(threads), "--dtype", str(dtype),
           "--seed", str(seed)] + ([] if memory_pool else ["--no-memory-pool"])
    return run_json_child(cmd, f"{impl} batch {batch}", timeout)


def run_json_child(cmd, what, timeout):
    """Run ``cmd`` (a measurement in a fresh Python process that imports this cnncore) and
    return the JSON of its last output line; RuntimeError naming ``what`` with the child's
    error output if it fails or prints nothing."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(),
                          timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement of {what} failed (exit "
                           f"{proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def memory_row(batch, impls, steps, threads, dtype="float32", seed=0, warnings=None,
               memory_pool=True):
    """One result row: ``{"group": "memory", "batch", "per_impl": {impl: dict},
    "ratio_torch": {impl: step_mb / torch's}, "ratio_torch_total": {impl: total_mb /
    torch's}}``. An implementation whose child fails is left out, with a message appended
    to ``warnings`` (raised if ``warnings`` is None)."""
    per = {}
    for impl in impls:
        try:
            per[impl] = measure(impl, batch, steps, threads, dtype, seed,
                                memory_pool=memory_pool)
        except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
            if warnings is None:
                raise
            warnings.append(f"peak memory, LeNet batch {batch}, {impl}: {exc}")
    row = {"group": "memory", "name": f"lenet5-b{batch}-memory", "batch": batch,
           "per_impl": per, "ratio_torch": {}, "ratio_torch_total": {}}
    torch_m = per.get("torch") or {}
    for impl, m in per.items():
        if impl == "torch":
            continue
        if torch_m.get("step_mb"):
            row["ratio_torch"][impl] = m["step_mb"] / torch_m["step_mb"]
        if torch_m.get("total_mb"):
            row["ratio_torch_total"][impl] = m["total_mb"] / torch_m["total_mb"]
    return row


def main(argv=None):
    """``python -m cnncore.bench.memory IMPL BATCH [--steps N] [--threads N] [--dtype D]
    [--no-memory-pool]``:
    print :func:`measure_here`'s dict as one JSON line."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m cnncore.bench.memory",
                                description="Peak memory of a LeNet-5 training step, "
                                            "measured in this (fresh) process.")
    p.add_argument("impl", choices=IMPLS)
    p.add_argument("batch", type=int)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory-pool", action="store_true",
                   help="NumPy's own allocator instead of cnncore.memory_pool()")
    args = p.parse_args(argv)
    print(json.dumps(measure_here(args.impl, args.batch, args.steps, args.threads,
                                  args.dtype, args.seed, not args.no_memory_pool)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the benchmark: machine probe, conv / pool rows, thread scaling, LeNet-5 steps and
their peak memory, and whole zoo networks against their PyTorch twins (``models``).

:func:`run` takes a :class:`Settings` and returns everything as one JSON-ready dict,
printing the table as rows are measured.
"""

import contextlib
import copy
import subprocess
import textwrap
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import backends, lenet, memory, models, peak, report
from .shapes import pool_bytes, shape_flops
from .timing import time_call

__all__ = ["Settings", "run"]

#: Largest relative difference accepted between cnncore and the other implementations.
TOLERANCE = {"float32": 1e-3, "float64": 1e-9}
#: Share of the CPUs used by other processes above which a row is marked as disturbed.
BUSY = report.BUSY


@dataclass
class Settings:
    """What to run; :mod:`cnncore.bench.__main__` fills it from the command line."""

    threads: int
    repeats: int = 10
    warmup: int = 2
    ref_repeats: int = 3
    ref_warmup: int = 1
    dtype: str = "float32"
    ops: tuple = ("conv", "pool", "lenet", "memory")
    conv_shapes: tuple = ()
    pool_shapes: tuple = ()
    lenet_batches: tuple = (64, 8)
    memory_steps: int = 5
    use_torch: bool = True
    use_reference: bool = True
    torch_backward: str = "aten"
    scaling: bool = False
    scaling_repeats: int = 3
    gemm_n: int = 4096
    mode: str = "full"
    mode_note: str = ""
    seed: int = 0
    settle: float = 0.25
    memory_pool: bool = True
    models: tuple = ()
    models_memory: bool = False
    use_ort: bool = True
    models_budget: float = 60.0
    models_min_repeats: int = 3
    #: models rows: interleaved rounds (cnncore then torch: ``models_rewarm`` untimed
    #: calls, one timed call, ``models_pause`` seconds after it); False
    #: (``--no-interleave``): one block each
    models_interleave: bool = True
    models_pause: float = 0.0
    models_rewarm: int = 1
    #: interleaved rounds go on (up to 100) until each implementation's timed calls sum
    #: to this many seconds: a median of 3 short calls is noise
    models_min_time: float = 0.5

    def as_dict(self):
        d = asdict(self)
        d["models_cases"] = [c.name for c in self.model_cases()]
        d["conv_shapes"] = [s.as_dict() for s in self.conv_shapes]
        d["pool_shapes"] = [s.as_dict() for s in self.pool_shapes]
        return d

    def model_cases(self):
        """The whole-network cases (:func:`cnncore.bench.models.plan`) of this run."""
        if "models" not in self.ops:
            return []
        return models.plan(self.mode, list(self.models) or None)


def _pct(value, total):
    return 100.0 * value / total if value is not None and total else None


class _Bench:
    def __init__(self, settings, emit):
        self.s = settings
        self.emit = emit
        self.dtype = np.dtype(settings.dtype)
        self.torch = None
        self.warnings = []
        self.peak = None
        self.monitor = peak.CpuMonitor()
        self._blas_spinning = False

    # ------------------------------------------------------------------ helpers
    def backends(self):
        names = ["cnncore"]
        if self.s.use_reference:
            names.append("reference")
        if self.torch is not None:
            names.append("torch")
        return names

    def settle(self):
        """After multi-threaded OpenBLAS work (the gemm peak, the NumPy reference) its idle
        worker threads keep spinning for about 0.1 s and steal cores from whoever runs
        next: wait for them to sleep before timing another implementation."""
        if self._blas_spinning and self.s.settle > 0:
            time.sleep(self.s.settle)
        self._blas_spinning = False

    def time(self, backend, fn):
        self.settle()
        if backend == "reference":
            out = time_call(fn, self.s.ref_warmup, self.s.ref_repeats)
            self._blas_spinning = self.s.threads > 1
            return out
        return time_call(fn, self.s.warmup, self.s.repeats)

    def rates(self, work, seconds):
        rate = work / seconds / 1e9
        return rate, _pct(rate, self.peak["gemm"]["gflops"]), _pct(rate, self.peak["theoretical"])

    def check(self, row, results):
        """Compare cnncore's outputs with the others' (outside the timed region)."""
        tol = TOLERANCE[self.dtype.name]
        row["rel_error"] = {}
        for other in ("reference", "torch"):
            if other in results:
                err = backends.rel_error(results["cnncore"], results[other])
                row["rel_error"][other] = err
                if not err <= tol:
                    row["ok"] = False
                    self.warnings.append(f"{row['name']} {row['pass']}: cnncore differs from "
                                         f"{other} by {err:.2e} (relative, tolerance {tol:g})")

    # ------------------------------------------------------------------ ops
    def op_rows(self, group, shapes, arrays_fn, calls_fn, work_fn):
        rows = []
        scaling = {"time_1": 0.0, "time_n": 0.0, "per_shape": []}
        for shape in shapes:
            arrays = arrays_fn(shape, self.dtype, self.s.seed)
            calls = {b: calls_fn(b, shape, arrays, self.s.threads, torch=self.torch,
                                 torch_backward=self.s.torch_backward)
                     for b in self.backends()}
            for direction in ("fwd", "bwd"):
                times, results = {}, {}
                before = self.monitor.snapshot()
                for b, c in calls.items():
                    times[b], results[b] = self.time(b, c[direction])
                row = {"group": group, "name": shape.name, "shape": shape.as_dict(),
                       "shape_text": shape.describe(), "pass": direction, "times": times,
                       "ok": True,
                       "other_cpu": self.monitor.other_share(before, self.monitor.snapshot())}
                med = times["cnncore"]["median"]
                if "torch" in times:
                    row["ratio_torch"] = med / times["torch"]["median"]
                if "reference" in times:
                    row["speedup_reference"] = times["reference"]["median"] / med
                work = work_fn(shape, direction)
                if group == "conv":
                    row["flops"] = work
                    row["gflops"], row["pct_peak_gemm"], row["pct_peak_theoretical"] = \
                        self.rates(work, med)
                    row["gflops_by_backend"] = {b: work / t["median"] / 1e9
                                                for b, t in times.items()}
                else:
                    row["bytes"] = work
                    row["gbps"] = work / med / 1e9
                    row["gbps_by_backend"] = {b: work / t["median"] / 1e9
                                              for b, t in times.items()}
                self.check(row, results)
                del results
                rows.append(row)
                self.emit(report.op_row(row))
            if group == "conv" and self.s.scaling:
                one = self.scaling_point(shape, arrays)
                n_time = sum(r["times"]["cnncore"]["median"] for r in rows[-2:])
                scaling["time_1"] += one["fwd"]["median"] + one["bwd"]["median"]
                scaling["time_n"] += n_time
                scaling["per_shape"].append({"name": shape.name, "times_1": one,
                                             "time_n": n_time})
        return rows, scaling

    def scaling_point(self, shape, arrays):
        self.settle()
        c = backends.conv_calls("cnncore", shape, arrays, 1)
        reps = self.s.scaling_repeats
        return {d: time_call(c[d], min(self.s.warmup, 1), reps)[0] for d in ("fwd", "bwd")}

    # ------------------------------------------------------------------ LeNet
    def lenet_row(self, batch):
        from .. import functional, reference
        x, labels = lenet.make_batch(batch, self.dtype, self.s.seed)
        params = lenet.init_params(self.dtype, self.s.seed)
        makers = {"cnncore": lambda p: lenet.functional_step(functional, p, x, labels,
                                                             n_threads=self.s.threads)}
        layers = lenet.layers_available()
        if layers is not None:
            makers["layers"] = lambda p: lenet.layers_step(layers, functional, p, x, labels)
        if self.s.use_reference:
            makers["reference"] = lambda p: lenet.functional_step(reference, p, x, labels)
        if self.torch is not None:
            makers["torch"] = lambda p: lenet.torch_step(self.torch, p, x, labels)
        flops = lenet.step_flops(batch)
        row = {"group": "lenet", "name": f"lenet5-b{batch}", "batch": batch, "flops": flops,
               "times": {}, "per_impl": {}, "first_loss": {}, "ok": True}
        before = self.monitor.snapshot()
        for key, make in makers.items():
            try:
                self.settle()
                with self.allocator(key):
                    step = make(copy.deepcopy(params))
                    row["first_loss"][key] = step()  # same weights and data everywhere
                    summary, _ = self.time("reference" if key == "reference" else key, step)
            except Exception as exc:  # e.g. cnncore.layers still in progress
                if key != "layers":
                    raise
                self.warnings.append(f"cnncore.layers LeNet step failed: "
                                     f"{type(exc).__name__}: {exc}")
                continue
            med = summary["median"]
            gflops, pg, pt = self.rates(flops, med)
            row["times"][key] = summary
            row["per_impl"][key] = {"images_per_s": batch / med, "gflops": gflops,
                                    "pct_peak_gemm": pg, "pct_peak_theoretical": pt}
        row["other_cpu"] = self.monitor.other_share(before, self.monitor.snapshot())
        ref = row["first_loss"]["cnncore"]
        tol = 1e-4 if self.dtype == np.float32 else 1e-10
        for key, loss in row["first_loss"].items():
            if abs(loss - ref) > tol * max(1.0, abs(ref)):
                row["ok"] = False
                self.warnings.append(f"LeNet batch {batch}: first-step loss of {key} {loss:.6g} "
                                     f"!= cnncore's {ref:.6g}")
        t = row["times"]
        if "torch" in t:
            row["ratio_torch"] = t["cnncore"]["median"] / t["torch"]["median"]
        if "reference" in t:
            row["speedup_reference"] = t["reference"]["median"] / t["cnncore"]["median"]
        return row

    def allocator(self, key):
        """NumPy-based steps run inside :class:`cnncore.memory_pool`, as ``Trainer.fit``
        runs them (unless ``--no-memory-pool``); torch's allocator is its own."""
        if key == "torch" or not self.s.memory_pool:
            return contextlib.nullcontext()
        from ..memory import memory_pool
        return memory_pool()

    # ------------------------------------------------------------------ peak memory
    def memory(self, res):
        impls = ["cnncore"]
        if lenet.layers_available() is not None:
            impls.append("layers")
        if self.s.use_reference:
            impls.append("reference")
        if self.torch is not None:
            impls.append("torch")
        self.emit("")
        for line in textwrap.wrap(report.MEMORY_NOTE, 100, subsequent_indent="  "):
            self.emit(line)
        self.emit(report.MEMORY_TABLE.header())
        for batch in self.s.lenet_batches:
            self.settle()
            row = memory.memory_row(batch, impls, self.s.memory_steps, self.s.threads,
                                    self.dtype.name, self.s.seed, warnings=self.warnings,
                                    memory_pool=self.s.memory_pool)
            res["memory"].append(row)
            for line in report.memory_rows(row):
                self.emit(line)

    # ------------------------------------------------------------------ whole networks
    def model_rows(self, res):
        s = self.s
        self.emit("")
        for line in textwrap.wrap(report.MODELS_NOTE, 100, subsequent_indent="  "):
            self.emit(line)
        if self.torch is None:
            self.emit(f"  torch {res['torch_status']}: cnncore columns only, outputs not "
                      "checked")
        from ..onnx.bench import ort_available
        self.use_ort = s.use_ort and ort_available()
        if s.use_ort and not self.use_ort:
            self.emit("  onnx / onnxruntime not installed: no ONNX Runtime column")
        self.emit(report.MODELS_TABLE.header())
        for case in s.model_cases():
            self.settle()
            row = models.run_case(
                case, self.torch, s.threads, self.dtype.name, s.seed, warmup=s.warmup,
                repeats=s.repeats, budget=s.models_budget, min_repeats=s.models_min_repeats,
                memory_pool=s.memory_pool, settle=s.settle, monitor=self.monitor,
                use_ort=self.use_ort, interleave=s.models_interleave, pause=s.models_pause,
                rewarm=s.models_rewarm, min_time=s.models_min_time)
            if s.models_memory:
                row["memory_fresh"] = {}
                impls = ["cnncore"] + (["torch"] if self.torch is not None else [])
                for impl in impls:
                    try:
                        row["memory_fresh"][impl] = models.measure(
                            case, impl, steps=s.memory_steps, threads=s.threads,
                            dtype=self.dtype.name, seed=s.seed, memory_pool=s.memory_pool)
                    except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                        self.warnings.append(f"peak memory, {case.name}, {impl}: {exc}")
            if row["check"] == "MISMATCH":
                self.warnings.append(
                    f"{case.name}: cnncore and torch outputs differ by "
                    f"{row['rel_error']:.2e} (tolerance {models.TOLERANCE[self.dtype.name]:g}; "
                    f"gradients {row.get('grad_rel_error', 0):.2e}, in a float64 step "
                    f"{row.get('grad_rel_error_f64', float('nan')):.2e}, tolerance "
                    f"{models.GRAD_TOLERANCE['float64']:g}; relative to the largest)")
            res["models"].append(row)
            self.emit(report.models_row(row))

    # ------------------------------------------------------------------ main
    def run(self):
        from threadpoolctl import threadpool_limits

        import cnncore
        from .._config import _num_threads as saved_threads  # restored at the end

        s = self.s
        start = time.perf_counter()
        run_start = self.monitor.snapshot()
        res = {"schema": 1, "settings": s.as_dict(), "warnings": self.warnings}
        if s.use_torch:
            self.torch = backends.import_torch()
            res["torch_status"] = "not installed" if self.torch is None else "used"
        else:
            res["torch_status"] = "disabled (--no-torch)"
        cnncore.set_num_threads(s.threads)
        if self.torch is not None:
            self.torch.set_num_threads(s.threads)
            res["torch"] = {"version": self.torch.__version__,
                            "threads": self.torch.get_num_threads(),
                            "mkldnn": bool(self.torch.backends.mkldnn.is_available()),
                            "backward": ("torch.autograd.grad on a retained forward graph"
                                         if s.torch_backward == "autograd" else
                                         "direct ATen backward ops (convolution_backward "
                                         "for dx, dw, db; pool backward with saved indices)")}
        else:
            res["torch"] = None
        cpu = peak.cpu_info()
        cpu["load_average"] = peak.load_average()
        res["machine"] = cpu
        res["config"] = cnncore.config()
        gemm = peak.measured_gemm_peak(s.threads, s.gemm_n, self.dtype)
        self._blas_spinning = s.threads > 1
        theo, how = peak.theoretical_peak(cpu, s.threads, self.dtype, cpu.get("max_mhz"))
        self.peak = res["peak"] = {"gemm": gemm, "theoretical": theo,
                                   "theoretical_assumptions": how}
        if not self.monitor.available and cpu["load_average"] is not None \
                and cpu["load_average"] > 0.5 * s.threads:
            self.warnings.append(f"load average {cpu['load_average']:.2f} at start: other "
                                 "processes were busy, timings may be slow and noisy")
        for line in report.header_lines(res):
            self.emit(line)
        res["rows"], res["lenet"], res["memory"], res["scaling"] = [], [], [], None
        res["models"] = []
        try:
            with threadpool_limits(limits=s.threads, user_api="blas"):
                if "conv" in s.ops and s.conv_shapes:
                    self.emit("")
                    self.emit(report.OP_TABLE.header())
                    rows, sc = self.op_rows("conv", s.conv_shapes, backends.conv_arrays,
                                            backends.conv_calls, shape_flops)
                    res["rows"] += rows
                    if s.scaling and sc["per_shape"]:
                        res["scaling"] = {"threads": s.threads, "shapes": len(sc["per_shape"]),
                                          "time_1": sc["time_1"], "time_n": sc["time_n"],
                                          "speedup": sc["time_1"] / sc["time_n"],
                                          "efficiency": sc["time_1"] / sc["time_n"] / s.threads,
                                          "per_shape": sc["per_shape"]}
                if "pool" in s.ops and s.pool_shapes:
                    if not res["rows"]:
                        self.emit("")
                        self.emit(report.OP_TABLE.header())
                    item = self.dtype.itemsize
                    rows, _ = self.op_rows("pool", s.pool_shapes, backends.pool_arrays,
                                           backends.pool_calls,
                                           lambda sh, d: pool_bytes(sh, d, item))
                    res["rows"] += rows
                if "lenet" in s.ops and s.lenet_batches:
                    self.emit("")
                    self.emit(report.LENET_TABLE.header())
                    for batch in s.lenet_batches:
                        row = self.lenet_row(batch)
                        res["lenet"].append(row)
                        for line in report.lenet_rows(row):
                            self.emit(line)
                if "memory" in s.ops and s.lenet_batches:
                    self.memory(res)
                if "models" in s.ops:
                    self.model_rows(res)
        finally:
            cnncore.set_num_threads(saved_threads)
        res["summary"] = summarize_results(res)
        res["wall_time_s"] = time.perf_counter() - start
        other = self.monitor.other_share(run_start, self.monitor.snapshot())
        res["other_cpu"] = other
        res["machine"]["load_average_end"] = peak.load_average()
        busy = [f"{r['name']} {r.get('pass', '')}".strip()
                for r in res["rows"] + res["lenet"] + res["models"]
                if (r.get("other_cpu") or 0) > BUSY]
        if other is not None and other > BUSY:
            self.warnings.append(f"other processes used {100 * other:.0f}% of the CPUs during "
                                 "the run: timings are slow and noisy")
        if busy:
            self.warnings.append(
                f"other processes used over {100 * BUSY:.0f}% of the CPUs while {len(busy)} "
                f"row(s) ran (marked '!'): their times are unreliable; rerun on an idle "
                f"machine")
        self.emit("")
        for line in report.summary_lines(res):
            self.emit(line)
        return res


def summarize_results(res):
    """Totals for the summary: conv fwd+bwd sums, worst NumPy speed-up, LeNet images/s."""
    out = {}
    conv = [r for r in res["rows"] if r["group"] == "conv"]
    if conv:
        c = {"rows": len(conv)}
        for b in ("cnncore", "reference", "torch"):
            if all(b in r["times"] for r in conv):
                c[b] = sum(r["times"][b]["median"] for r in conv)
        if "torch" in c:
            c["ratio_torch"] = c["cnncore"] / c["torch"]
        sp = [(r["speedup_reference"], f"{r['name']} {r['pass']}") for r in conv
              if "speedup_reference" in r]
        if sp:
            c["min_speedup_reference"], c["min_speedup_row"] = min(sp)
        out["conv"] = c
    out["lenet"] = []
    for r in res["lenet"]:
        ips = {k: v["images_per_s"] for k, v in r["per_impl"].items()}
        e = {"batch": r["batch"], "cnncore": ips.get("cnncore"), "torch": ips.get("torch"),
             "layers": ips.get("layers"), "reference": ips.get("reference")}
        if e["torch"]:
            e["ratio"] = e["cnncore"] / e["torch"]
        out["lenet"].append(e)
    out["memory"] = []
    for r in res.get("memory", []):
        per = r["per_impl"]
        if "cnncore" not in per:
            continue
        t = per.get("torch") or {}
        out["memory"].append({
            "batch": r["batch"], "cnncore_step": per["cnncore"]["step_mb"],
            "cnncore_total": per["cnncore"]["total_mb"], "torch_step": t.get("step_mb"),
            "torch_total": t.get("total_mb"), "ratio_step": r["ratio_torch"].get("cnncore"),
            "ratio_total": r["ratio_torch_total"].get("cnncore")})
    ratios = [(r["ratio_torch"], r["name"]) for r in res.get("models", [])
              if r.get("ratio_torch")]
    if res.get("models"):
        m = {"rows": len(res["models"]), "ratios": len(ratios),
             "mismatches": sum(r["check"] == "MISMATCH" for r in res["models"])}
        if ratios:
            m["geomean_ratio"] = float(np.exp(np.mean(np.log([r for r, _ in ratios]))))
            m["best"], m["worst"] = min(ratios), max(ratios)
        ort = [(r["ratio_ort"], r["name"]) for r in res["models"] if r.get("ratio_ort")]
        if ort:
            m["ort_geomean_ratio"] = float(np.exp(np.mean(np.log([r for r, _ in ort]))))
            m["ort_worst"] = max(ort)
        out["models"] = m
    return out


def run(settings, emit=print):
    """Run the benchmark described by ``settings``.

    Parameters
    ----------
    settings : Settings
    emit : callable
        Receives each output line as it is ready (``print`` by default).

    Returns
    -------
    dict
        ``schema``, ``settings``, ``machine``, ``config`` (``cnncore.config()``), ``peak``,
        ``torch``, ``rows`` (conv and pool, every repeat), ``lenet``, ``memory`` (peak
        memory of the LeNet-5 step, :mod:`.memory`), ``models`` (whole networks,
        :mod:`.models`), ``scaling``, ``summary``,
        ``warnings``, ``wall_time_s``.
    """
    return _Bench(settings, emit).run()

"""Text output: number formats, the aligned tables, the header and the summary."""

import math

#: Share of the CPUs used by other processes above which a row is marked with '!'.
BUSY = 0.10

__all__ = ["fmt_ms", "fmt_num", "fmt_ratio", "Table", "OP_TABLE", "LENET_TABLE",
           "MEMORY_TABLE", "MODELS_TABLE", "header_lines", "summary_lines", "models_row"]


def fmt_ms(seconds):
    """Seconds as milliseconds with about four significant digits; ``-`` for None."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 1000:
        return f"{ms:.0f}"
    if ms >= 100:
        return f"{ms:.1f}"
    if ms >= 10:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_num(value, digits=1):
    """A rate or percentage; ``-`` for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value >= 1e5:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def fmt_ratio(value):
    """A ratio with two decimals (three below 0.1); ``-`` for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value < 0.1:
        return f"{value:.3f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


def fmt_range(summary):
    """``min..max`` in ms of a timing summary."""
    if summary is None:
        return "-"
    return f"{fmt_ms(summary['min'])}..{fmt_ms(summary['max'])}"


class Table:
    """Fixed-width columns, so that rows can be printed as soon as they are measured.

    Parameters
    ----------
    columns : list of (title, width, align)
        ``align`` is ``"<"`` or ``">"``.
    """

    def __init__(self, columns):
        self.columns = columns

    def row(self, *cells):
        parts = []
        for (_, width, align), cell in zip(self.columns, cells):
            parts.append(f"{str(cell):{align}{width}}")
        return " ".join(parts).rstrip()

    def header(self):
        head = self.row(*(c[0] for c in self.columns))
        return head + "\n" + "-" * len(head)


OP_TABLE = Table([
    ("op", 14, "<"), ("shape N x C x H x W > C_out", 28, "<"), ("pass", 4, "<"),
    ("cnncore", 9, ">"), ("min..max", 17, ">"), ("numpy", 9, ">"), ("torch", 9, ">"),
    ("/torch", 6, ">"), ("xnumpy", 6, ">"), ("GFLOP/s", 8, ">"), ("%gemm", 6, ">"),
    ("%theo", 6, ">"),
])

LENET_TABLE = Table([
    ("LeNet-5 step", 12, "<"), ("implementation", 19, "<"), ("ms", 9, ">"),
    ("min..max", 17, ">"), ("images/s", 9, ">"), ("/torch", 6, ">"), ("xnumpy", 6, ">"),
    ("GFLOP/s", 8, ">"), ("%gemm", 6, ">"), ("%theo", 6, ">"), ("faults", 6, ">"),
])


def op_row(row):
    """One line of :data:`OP_TABLE` from a conv or pool result row."""
    t = row["times"]
    rate = row.get("gflops") if row["group"] == "conv" else row.get("gbps")
    flag = "" if row.get("ok", True) else "  <-- results differ, see below"
    if (row.get("other_cpu") or 0) > BUSY:
        flag = f" ! {100 * row['other_cpu']:.0f}% busy" + flag
    return OP_TABLE.row(
        row["name"], row["shape_text"], row["pass"], fmt_ms(t["cnncore"]["median"]),
        fmt_range(t["cnncore"]), fmt_ms((t.get("reference") or {}).get("median")),
        fmt_ms((t.get("torch") or {}).get("median")), fmt_ratio(row.get("ratio_torch")),
        fmt_ratio(row.get("speedup_reference")), fmt_num(rate),
        fmt_num(row.get("pct_peak_gemm")), fmt_num(row.get("pct_peak_theoretical"))) + flag


LENET_LABELS = {"cnncore": "cnncore.functional", "layers": "cnncore.layers",
                "reference": "numpy reference", "torch": "torch.nn"}


def lenet_rows(row):
    """Lines of :data:`LENET_TABLE` for one batch size (one line per implementation)."""
    lines = []
    t = row["times"]
    busy = ""
    if (row.get("other_cpu") or 0) > BUSY:
        busy = f" ! {100 * row['other_cpu']:.0f}% busy"
    torch_t = (t.get("torch") or {}).get("median")
    ref_t = (t.get("reference") or {}).get("median")
    for key, label in LENET_LABELS.items():
        s = t.get(key)
        if s is None:
            continue
        med = s["median"]
        ratio = med / torch_t if torch_t and key != "torch" else None
        speed = ref_t / med if ref_t and key not in ("reference",) else None
        info = row["per_impl"][key]
        lines.append(LENET_TABLE.row(
            f"batch {row['batch']}", label, fmt_ms(med), fmt_range(s),
            fmt_num(info["images_per_s"], 0), fmt_ratio(ratio), fmt_ratio(speed),
            fmt_num(info["gflops"]), fmt_num(info.get("pct_peak_gemm")),
            fmt_num(info.get("pct_peak_theoretical")),
            fmt_num(s.get("minor_faults_per_call"), 0)) + busy)
    return lines


MEMORY_TABLE = Table([
    ("peak memory", 12, "<"), ("implementation", 19, "<"), ("step MB", 8, ">"),
    ("/torch", 6, ">"), ("total MB", 8, ">"), ("/torch", 6, ">"), ("retained", 8, ">"),
    ("traced MB", 9, ">"), ("faults", 6, ">"),
])

MEMORY_NOTE = (
    "peak memory of a LeNet-5 step, each implementation in a fresh process "
    "(cnncore.bench.memory): step MB = peak RSS over the steps above the RSS after a warm-up "
    "step; total MB = that peak above the RSS before the first step; retained = what the "
    "warm-up step left resident (kept buffers, runtime start-up, memory the allocator keeps); "
    "traced MB = tracemalloc peak of a step (NumPy buffers; torch's allocator is invisible "
    "to it); faults = minor page faults per step")


def memory_rows(row):
    """Lines of :data:`MEMORY_TABLE` for one batch size (one line per implementation)."""
    lines = []
    for key, label in LENET_LABELS.items():
        m = row["per_impl"].get(key)
        if m is None:
            continue
        lines.append(MEMORY_TABLE.row(
            f"batch {row['batch']}", label, fmt_num(m["step_mb"], 2),
            fmt_ratio(row["ratio_torch"].get(key)), fmt_num(m["total_mb"], 2),
            fmt_ratio(row["ratio_torch_total"].get(key)), fmt_num(m["retained_mb"], 2),
            fmt_num(m.get("tracemalloc_mb"), 2), fmt_num(m.get("faults_per_step"), 0)))
    return lines


MODELS_TABLE = Table([
    ("network", 22, "<"), ("input", 9, "<"), ("pass", 5, "<"), ("batch", 5, ">"),
    ("cnncore ms", 10, ">"), ("torch ms", 9, ">"), ("cnncore im/s", 12, ">"),
    ("torch im/s", 10, ">"), ("/torch", 6, ">"), ("cnncore MB", 10, ">"),
    ("torch MB", 8, ">"), ("ort ms", 8, ">"), ("/ort", 5, ">"), ("check", 8, "<"),
])

MODELS_NOTE = (
    "whole networks (--ops models): the zoo model and its cnncore.interop.to_torch twin "
    "(same weights); infer = eval-mode forward (torch under inference_mode), train = one "
    "SGD-momentum step with softmax cross-entropy (cnncore as Trainer.fit does it, in a "
    "memory pool); ms = median, by default of interleaved rounds (one timed call of cnncore "
    "and of torch per round, after each one's own warm-up; --no-interleave, and ONNX "
    "Runtime always: one block of calls each); /torch = cnncore time / torch time; MB = peak RSS of an implementation's "
    "check and warm-up calls (--no-interleave: of all its calls; the memory pool reaches "
    "its peak there) above the resident size before the first (activations, temporaries, "
    "gradients, momentum; weights and inputs excluded; --models-memory: the same in a "
    "fresh process per case and implementation); ort = the model exported by "
    "cnncore.onnx.export in ONNX Runtime (inference rows, when onnx and onnxruntime are "
    "installed; --no-ort to leave it out), /ort = cnncore time / its time; check = logits "
    "(train: and gradients) compared outside the timed region")


def models_row(row):
    """One line of :data:`MODELS_TABLE` for a whole-network case."""
    t = row["times"]
    ips = row["images_per_s"]
    mem = row.get("memory_fresh") or row["peak_mb"]
    key = "total_mb" if row.get("memory_fresh") else None

    def mb(impl):
        v = mem.get(impl)
        return fmt_num(v.get(key) if key and v else v, 0)
    flag = ""
    if (row.get("other_cpu") or 0) > BUSY:
        flag = f" ! {100 * row['other_cpu']:.0f}% busy"
    if row["times"]["cnncore"].get("cut"):
        flag += f" (n={row['times']['cnncore']['n']})"
    return MODELS_TABLE.row(
        row["label"], "x".join(str(s) for s in row["input_shape"]), row["mode"],
        row["batch"], fmt_ms(t["cnncore"]["median"]),
        fmt_ms((t.get("torch") or {}).get("median")), fmt_num(ips.get("cnncore")),
        fmt_num(ips.get("torch")), fmt_ratio(row.get("ratio_torch")), mb("cnncore"),
        mb("torch"), fmt_ms((t.get("onnxruntime") or {}).get("median")),
        fmt_ratio(row.get("ratio_ort")), row["check"]) + flag


def models_timing_line(s):
    """The header line that says how the whole-network rows are timed (settings dict)."""
    limit = (f"stopping after {s.get('models_budget', 0):g} s of calls per implementation "
             f"once {s.get('models_min_repeats', 1)} ran")
    if s.get("models_interleave", False):
        more = (f"; more rounds, up to 100, until each implementation's timed calls sum "
                f"to {s['models_min_time']:g} s" if s.get("models_min_time") else "")
        return (f"  models rows: median of interleaved rounds (at most {s['repeats']}, "
                f"{limit}{more}): after each implementation's own check and warm-up "
                f"({max(1, s['warmup'])} call(s)), every round runs cnncore and torch "
                f"in turn (ONNX Runtime: one block of its own afterwards), each "
                f"{s.get('models_rewarm', 0)} untimed call(s) then one timed alone, back to "
                f"back, {s.get('models_pause', 0):g} s pause after each timed call "
                "(--no-interleave: one block per implementation)")
    return (f"  models rows: one block per implementation (--no-interleave): median of "
            f"{s['repeats']} calls after {s['warmup']} warm-up, {limit}")


def header_lines(res):
    """The header: what ran, on what, against what peak."""
    s, m, cfg = res["settings"], res["machine"], res["config"]
    peak = res["peak"]
    p = "FP64" if s["dtype"] == "float64" else "FP32"
    lines = [
        f"cnncore.bench: cnncore {cfg.get('version')} vs NumPy reference vs PyTorch, "
        f"{s['dtype']}, {s['threads']} thread(s), mode {s['mode']}",
        f"  timing: median of {s['repeats']} repeats after {s['warmup']} warm-up "
        f"(numpy reference: {s['ref_repeats']} after {s['ref_warmup']}); "
        "time.perf_counter, inputs made outside the timed region, seeded data",
    ]
    if "models" in (s.get("ops") or ()):
        lines.append(models_timing_line(s))
    if s.get("mode_note"):
        lines.append(f"  {s['mode_note']}")
    load = m.get("load_average")
    lines += [
        f"machine: {m.get('model') or 'unknown CPU'}, {m.get('physical_cores')} core(s) / "
        f"{m.get('logical_cpus')} logical CPU(s), load average {fmt_num(load, 2)} at start",
        f"{p} peak at {s['threads']} thread(s):",
        f"  measured: {fmt_num(peak['gemm']['gflops'])} GFLOP/s, best NumPy "
        f"{peak['gemm']['dtype']} matmul {peak['gemm']['n']}^2 ({peak['gemm']['blas']})",
        f"  theoretical: {fmt_num(peak['theoretical'])} GFLOP/s = "
        f"{peak['theoretical_assumptions']}",
    ]
    omp = "on" if cfg.get("openmp") else "OFF (serial build)"
    blas = "; ".join(cfg.get("blas") or []) or "not found"
    lines.append(f"cnncore: OpenMP {omp}, BLAS {blas}")
    lines.append(f"  compiler: {cfg.get('compiler')} {' '.join(cfg.get('compile_flags') or [])}")
    if s.get("memory_pool", True):
        lines.append("  LeNet-5 steps of cnncore and the NumPy reference run inside "
                     "cnncore.memory_pool(), as Trainer.fit does (--no-memory-pool: NumPy's "
                     "allocator)")
    else:
        lines.append("  LeNet-5 steps use NumPy's own allocator (--no-memory-pool)")
    tinfo = res.get("torch")
    if tinfo:
        lines.append(f"torch: {tinfo['version']}, {tinfo['threads']} thread(s), "
                     f"mkldnn {'on' if tinfo.get('mkldnn') else 'off'}; backward = "
                     f"{tinfo['backward']}")
    else:
        lines.append(f"torch: {res.get('torch_status', 'not used')}")
    lines += [
        "columns: times in ms (median; min..max is cnncore's); /torch = cnncore time / torch "
        "time (< 1: cnncore is faster); xnumpy = numpy reference time / cnncore time (> 1: "
        "cnncore is faster);",
        f"  GFLOP/s (GB/s for pools: bytes read + written) and % of the measured (%gemm) "
        f"and theoretical (%theo) {p} peak are cnncore's;",
        f"  '! N% busy': other processes used N% of the CPUs while the row ran "
        f"(> {100 * BUSY:.0f}%: unreliable); faults: minor page faults per LeNet step "
        "(first touches of freshly allocated memory)",
    ]
    return lines


def summary_lines(res):
    """The closing summary: totals, worst speed-up over NumPy, LeNet, scaling, problems."""
    sm = res["summary"]
    lines = ["summary:"]
    conv = sm.get("conv")
    if conv:
        line = f"  conv fwd+bwd total over {conv['rows'] // 2} shapes: cnncore " \
               f"{fmt_ms(conv['cnncore'])} ms"
        if conv.get("torch") is not None:
            line += (f", torch {fmt_ms(conv['torch'])} ms (ratio {fmt_ratio(conv['ratio_torch'])}"
                     f"; < 1: cnncore faster)")
        if conv.get("reference") is not None:
            line += f", numpy {fmt_ms(conv['reference'])} ms"
        lines.append(line)
        if conv.get("min_speedup_reference") is not None:
            lines.append(f"  min speed-up over NumPy across conv rows: "
                         f"{fmt_ratio(conv['min_speedup_reference'])}x "
                         f"({conv['min_speedup_row']})")
    for le in sm.get("lenet", []):
        line = f"  LeNet-5 batch {le['batch']}: cnncore {fmt_num(le['cnncore'], 0)} images/s"
        if le.get("torch"):
            line += (f", torch {fmt_num(le['torch'], 0)} images/s: cnncore/torch images/s = "
                     f"{fmt_ratio(le['ratio'])} (> 1: cnncore faster)")
        if le.get("layers"):
            line += f"; cnncore.layers {fmt_num(le['layers'], 0)} images/s"
        lines.append(line)
    mo = sm.get("models")
    if mo and mo.get("ratios"):
        lines.append(f"  whole networks: {mo['rows']} rows, cnncore/torch time ratio "
                     f"geometric mean {fmt_ratio(mo['geomean_ratio'])}, best "
                     f"{fmt_ratio(mo['best'][0])} ({mo['best'][1]}), worst "
                     f"{fmt_ratio(mo['worst'][0])} ({mo['worst'][1]}); "
                     f"{mo['mismatches']} mismatch(es)")
        if mo.get("ort_geomean_ratio"):
            lines.append(f"  whole networks, inference: cnncore/ONNX Runtime time ratio "
                         f"geometric mean {fmt_ratio(mo['ort_geomean_ratio'])}, worst "
                         f"{fmt_ratio(mo['ort_worst'][0])} ({mo['ort_worst'][1]})")
    for me in sm.get("memory", []):
        line = (f"  LeNet-5 batch {me['batch']} peak memory: cnncore "
                f"{fmt_num(me['cnncore_step'], 2)} MB per step "
                f"({fmt_num(me['cnncore_total'], 2)} MB total)")
        if me.get("torch_step") is not None:
            line += (f", torch {fmt_num(me['torch_step'], 2)} MB "
                     f"({fmt_num(me['torch_total'], 2)} MB "
                     f"total): cnncore/torch = {fmt_ratio(me.get('ratio_step'))} per step, "
                     f"{fmt_ratio(me.get('ratio_total'))} total")
        lines.append(line)
    sc = res.get("scaling")
    if sc:
        lines.append(f"  thread scaling, cnncore conv fwd+bwd summed over {sc['shapes']} "
                     f"shapes: {fmt_ms(sc['time_1'])} ms at 1 thread, {fmt_ms(sc['time_n'])} "
                     f"ms at {sc['threads']}: speed-up {fmt_ratio(sc['speedup'])}x "
                     f"({fmt_num(100 * sc['efficiency'])}% parallel efficiency)")
    if res.get("other_cpu") is not None:
        lines.append(f"  other processes used {100 * res['other_cpu']:.0f}% of the CPUs during "
                     f"the run (load average {fmt_num(res['machine'].get('load_average'), 2)} "
                     f"at start, {fmt_num(res['machine'].get('load_average_end'), 2)} at end)")
    for w in res.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    lines.append(f"  wall time {res['wall_time_s']:.1f} s")
    return lines

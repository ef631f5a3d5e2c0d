"""``bench-table``: tables of a stored ``python -m cnncore.bench --json`` run, made at build time.

The measured-results page shows the numbers of a committed JSON file instead of tables
copied by hand, so the tables, the command line and the machine description cannot drift
apart. In a MyST page::

    ```{bench-table} _static/bench.json
    :kind: conv
    ```

``kind`` is one of ``run`` (command, machine, load during the run), ``conv``, ``pool``,
``lenet``, ``memory`` or ``summary``.
"""

import json
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives

KINDS = ("run", "conv", "pool", "lenet", "memory", "summary")


def _ms(seconds):
    return "–" if seconds is None else f"{1e3 * seconds:.3g}"


def _ratio(value):
    return "–" if value is None else f"{value:.2f}"


def _median(row, backend):
    t = row.get("times", {}).get(backend)
    return None if not t else t.get("median")


def _table(header, rows):
    table = nodes.table(classes=["bench-table"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for _ in header:
        group += nodes.colspec(colwidth=1)

    def make_row(cells):
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=str(cell))
            row += entry
        return row

    thead = nodes.thead()
    thead += make_row(header)
    group += thead
    tbody = nodes.tbody()
    for cells in rows:
        tbody += make_row(cells)
    group += tbody
    return table


def command_line(data):
    """The command that reproduces the run, from its settings."""
    s = data["settings"]
    parts = ["python -m cnncore.bench", f"--threads {s['threads']}"]
    if s.get("repeats") == 3 and s.get("ref_repeats") == 1:
        parts.append("--quick")
    if s.get("ops") and set(s["ops"]) != {"conv", "pool", "lenet", "memory"}:
        parts.append("--ops " + ",".join(s["ops"]))
    if s.get("dtype", "float32") != "float32":
        parts.append(f"--dtype {s['dtype']}")
    parts.append("--json docs/_static/bench.json")
    return " ".join(parts)


def run_rows(data):
    m, c, s = data["machine"], data["config"], data["settings"]
    torch = data.get("torch") or {}
    peak = data.get("peak") or {}
    gemm = (peak.get("gemm") or {}).get("gflops")
    rows = [
        ("command", command_line(data)),
        ("CPU", f"{m.get('model', '?')}, {m.get('physical_cores', '?')} cores "
                f"({m.get('logical_cpus', '?')} logical), {m.get('mhz', 0) / 1000:.2f} GHz"),
        ("cnncore", f"{c['version']}, Python {c['python']}, OpenMP "
                    f"{'on' if c['openmp'] else 'off'}, {c['compiler']} "
                    f"{' '.join(c.get('compile_flags', []))}"),
        ("BLAS", "; ".join(b.split(" (")[0] for b in c.get("blas", []))),
        ("PyTorch", f"{torch.get('version', 'not installed')}"
                    + (f", backward timed as {torch['backward']}" if torch.get("backward") else "")),
        ("settings", f"{s['threads']} threads, {s['dtype']}, median of {s['repeats']} repeats "
                     f"after {s['warmup']} warm-up call(s)"),
        ("measured GEMM peak", "–" if gemm is None else f"{gemm:.0f} GFLOP/s"),
        ("CPU used by other processes", f"{100 * data.get('other_cpu', 0):.0f} %"),
    ]
    return ["", ""], rows


def conv_rows(data, group):
    header = ["problem", "shape", "pass", "cnncore ms", "torch ms", "numpy ms",
              "cnncore / torch", "speed-up over numpy"]
    rows = []
    for r in data["rows"]:
        if r.get("group") != group:
            continue
        rows.append([r["name"], r.get("shape_text", ""), r["pass"], _ms(_median(r, "cnncore")),
                     _ms(_median(r, "torch")), _ms(_median(r, "reference")),
                     _ratio(r.get("ratio_torch")),
                     "–" if r.get("speedup_reference") is None
                     else f"{r['speedup_reference']:.1f}x"])
    return header, rows


def lenet_rows(data):
    header = ["LeNet-5 training step", "cnncore.functional", "cnncore.layers", "torch.nn",
              "numpy reference", "cnncore / torch (images/s)"]
    rows = []
    for s in data["summary"].get("lenet", []):
        fmt = lambda v: "–" if v is None else f"{v:,.0f} images/s"  # noqa: E731
        rows.append([f"batch {s['batch']}", fmt(s.get("cnncore")), fmt(s.get("layers")),
                     fmt(s.get("torch")), fmt(s.get("reference")), _ratio(s.get("ratio"))])
    return header, rows


def memory_rows(data):
    header = ["MB", "batch", "step", "total", "retained", "traced"]
    rows = []
    for entry in data.get("memory") or []:
        for impl, m in entry.get("per_impl", {}).items():
            fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
            rows.append([impl, entry.get("batch"), fmt(m.get("step_mb")), fmt(m.get("total_mb")),
                         fmt(m.get("retained_mb")), fmt(m.get("tracemalloc_mb"))])
    return header, rows


def summary_rows(data):
    s = data["summary"]
    conv = s.get("conv") or {}
    rows = []
    if conv:
        rows.append(["conv forward + backward, all shapes",
                     f"cnncore {_ms(conv.get('cnncore'))} ms, torch {_ms(conv.get('torch'))} ms",
                     _ratio(conv.get("ratio_torch"))])
    for entry in s.get("lenet", []):
        rows.append([f"LeNet-5 step, batch {entry['batch']} (images/s, torch / cnncore)",
                     f"cnncore {entry['cnncore']:,.0f}, torch {entry['torch']:,.0f}",
                     _ratio(1 / entry["ratio"]) if entry.get("ratio") else "–"])
    return ["", "measured", "time ratio cnncore / torch (< 1: cnncore faster)"], rows


class BenchTable(Directive):
    required_arguments = 1
    option_spec = {"kind": lambda arg: directives.choice(arg, KINDS)}
    has_content = False

    def run(self):
        env = self.state.document.settings.env
        rel, path = env.relfn2path(self.arguments[0])
        env.note_dependency(rel)
        data = json.loads(Path(path).read_text())
        kind = self.options.get("kind", "summary")
        if kind == "run":
            header, rows = run_rows(data)
        elif kind in ("conv", "pool"):
            header, rows = conv_rows(data, kind)
        elif kind == "lenet":
            header, rows = lenet_rows(data)
        elif kind == "memory":
            header, rows = memory_rows(data)
        else:
            header, rows = summary_rows(data)
        return [_table(header, rows)]


def setup(app):
    app.add_directive("bench-table", BenchTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

"""Tests of the profiler ``python -m cnncore.bench``.

Speed is never tested: only that the command runs and writes the expected JSON, and that
its pure helpers (FLOP/byte counts, the timing summary, the cpuinfo parser and the peak
formula) are right on small cases worked out by hand.
"""

import json
import os
import site
import subprocess
import sys

import numpy as np
import pytest

import cnncore
from cnncore.bench import memory, peak, shapes, timing
from cnncore.bench.__main__ import build_parser, settings_from_args

# ----------------------------------------------------------------------------- FLOPs, bytes


def test_conv_flops_by_hand():
    # 1 image, 2 input channels, 3x3, one 2x2 filter, no padding: 2x2 outputs, each
    # 2 channels x 4 taps = 8 multiply-adds = 16 FLOPs -> 64 in all.
    assert shapes.conv_flops(1, 2, 1, 2, 2, 2, 2) == 64
    assert shapes.conv_backward_flops(1, 2, 1, 2, 2, 2, 2) == 128
    # groups=2 on 4 channels, 1x1 kernel, 1x1 image, 2 outputs: each output sums 2 inputs
    # (2 multiply-adds = 4 FLOPs) -> 8.
    assert shapes.conv_flops(1, 4, 2, 1, 1, 1, 1, groups=2) == 8


def test_shape_flops_and_output_size():
    lenet1 = shapes.ConvShape("t", 64, 1, 28, 28, 6, 5, padding=2)
    assert shapes.conv_out_hw(lenet1) == (28, 28)
    assert shapes.shape_flops(lenet1, "fwd") == 2 * 64 * 6 * 28 * 28 * 1 * 25
    assert shapes.shape_flops(lenet1, "bwd") == 2 * shapes.shape_flops(lenet1, "fwd")
    alex = shapes.ConvShape("a", 8, 3, 224, 224, 64, 11, stride=4, padding=2)
    assert shapes.conv_out_hw(alex) == (55, 55)
    dw = shapes.ConvShape("d", 1, 4, 3, 3, 4, 3, padding=1, groups=4)
    assert dw.w_shape == (4, 1, 3, 3)
    assert shapes.shape_flops(dw, "fwd") == 2 * 4 * 9 * 9


def test_pool_bytes_by_hand():
    p = shapes.PoolShape("p", "max", 1, 1, 4, 4, 2, 2)  # 16 in, 4 out
    assert p.y_shape == (1, 1, 2, 2)
    assert shapes.pool_bytes(p, "fwd", 4) == (16 + 4) * 4
    assert shapes.pool_bytes(p, "bwd", 4) == (4 + 16 + 16) * 4   # grad_out, x, grad_x
    a = shapes.PoolShape("a", "avg", 1, 1, 4, 4, 2, 2)
    assert shapes.pool_bytes(a, "bwd", 8) == (4 + 16) * 8        # grad_out, grad_x


def test_standard_shape_set():
    names = [s.name for s in shapes.CONV_SHAPES]
    assert len(names) == len(set(names)) == 9
    assert all(s.n >= 1 for s in shapes.scaled(shapes.CONV_SHAPES, 1000))

# ----------------------------------------------------------------------------- timing


def test_summarize():
    s = timing.summarize([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert s["times"] == [3.0, 1.0, 2.0]
    assert timing.summarize([1.0, 2.0, 3.0, 10.0])["median"] == 2.5
    with pytest.raises(ValueError):
        timing.summarize([])


def test_time_call_warmup_and_repeats():
    calls = []
    ticks = iter(range(100))
    faults = iter([10, 16])
    summary, result = timing.time_call(lambda: calls.append(1) or len(calls), warmup=2,
                                       repeats=3, clock=lambda: next(ticks),
                                       faults=lambda: next(faults))
    assert len(calls) == 5 and result == 5
    assert summary["n"] == 3 and summary["times"] == [1, 1, 1]
    assert summary["minor_faults_per_call"] == 2.0

# ----------------------------------------------------------------------------- peak

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
cpu MHz\t\t: 2500.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
cpu MHz\t\t: 2400.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw

processor\t: 2
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
cpu MHz\t\t: 2500.000
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw
"""


def test_parse_cpuinfo():
    info = peak.parse_cpuinfo(CPUINFO)
    assert info["model"].startswith("Intel(R) Xeon(R) Gold 6248")
    assert info["logical_cpus"] == 3
    assert info["physical_cores"] == 2          # processors 0 and 1 are SMT siblings
    assert info["mhz"] == 2500.0                # the first 'cpu MHz' line
    assert "avx512f" in info["flags"]


def test_theoretical_peak_avx512_and_avx2():
    info = peak.parse_cpuinfo(CPUINFO)
    # 2 cores x 2.5 GHz x 16 lanes x 2 FMA units x 2 flops = 320 GFLOP/s
    gflops, how = peak.theoretical_peak(info, threads=8)
    assert gflops == pytest.approx(320.0)
    assert "16 float32 lanes" in how
    assert peak.theoretical_peak(info, threads=1)[0] == pytest.approx(160.0)
    assert peak.theoretical_peak(info, 1, np.float64)[0] == pytest.approx(80.0)
    avx2 = dict(info, flags=["avx", "avx2", "fma"])
    assert peak.theoretical_peak(avx2, 1)[0] == pytest.approx(2.5 * 8 * 2 * 2)
    assert peak.theoretical_peak(avx2, 1, mhz=3000.0)[0] == pytest.approx(3.0 * 32)
    assert peak.theoretical_peak(dict(info, mhz=None), 1)[0] is None


def test_parse_lscpu_max_mhz():
    assert peak.parse_lscpu_max_mhz("Model name: X\nCPU max MHz:  3900.0000\n") == 3900.0
    assert peak.parse_lscpu_max_mhz("Model name: X\n") is None

# ----------------------------------------------------------------------------- CLI


def test_cli_arguments():
    p = build_parser()
    s = settings_from_args(p.parse_args(["--quick", "--threads", "2", "--ops", "conv"]))
    assert s.mode == "quick" and s.repeats == 3 and s.threads == 2 and s.ops == ("conv",)
    assert not s.scaling                        # never in --quick unless asked
    assert s.conv_shapes[0].n == shapes.CONV_SHAPES[0].n // 4
    full = settings_from_args(p.parse_args(["--threads", "2", "--repeats", "12"]))
    assert full.ref_repeats == 4 and full.scaling
    assert settings_from_args(p.parse_args(["--threads", "1"])).scaling is False
    assert "memory" in full.ops and full.memory_steps == 5
    assert s.memory_steps == 2
    assert settings_from_args(p.parse_args(["--smoke"])).memory_steps == 1
    assert full.memory_pool is True
    assert settings_from_args(p.parse_args(["--no-memory-pool"])).memory_pool is False
    with pytest.raises(ValueError):
        settings_from_args(p.parse_args(["--ops", "conv,bogus"]))
    with pytest.raises(ValueError):
        settings_from_args(p.parse_args(["--shapes", "nope"]))


def _env():
    """Environment for a subprocess that imports the same cnncore as these tests: an
    installed cnncore needs nothing; a source tree (``PYTHONPATH=src``) is passed on."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(cnncore.__file__)))
    installed = {os.path.abspath(p)
                 for p in site.getsitepackages() + [site.getusersitepackages()]}
    if root not in installed:
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([root] + rest)
    return env


def test_quick_run_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cnncore.bench", "--quick", "--no-torch", "--json", str(out)],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "QUICK mode" in proc.stdout and "summary:" in proc.stdout
    res = json.loads(out.read_text())
    for key in ("schema", "settings", "machine", "config", "peak", "rows", "lenet",
                "summary", "warnings", "wall_time_s"):
        assert key in res, key
    assert res["torch"] is None and res["settings"]["mode"] == "quick"
    assert res["peak"]["gemm"]["gflops"] > 0
    n_conv, n_pool = len(shapes.CONV_SHAPES), len(shapes.POOL_SHAPES)
    rows = res["rows"]
    assert len(rows) == 2 * (n_conv + n_pool)
    assert {r["name"] for r in rows} == {s.name for s in shapes.CONV_SHAPES + shapes.POOL_SHAPES}
    for r in rows:
        assert r["pass"] in ("fwd", "bwd")
        assert len(r["times"]["cnncore"]["times"]) == 3
        assert r["times"]["cnncore"]["median"] > 0
        assert "reference" in r["times"] and "torch" not in r["times"]
        assert r["speedup_reference"] > 0
        assert ("gflops" in r) == (r["group"] == "conv")
        assert ("gbps" in r) == (r["group"] == "pool")
        assert r["ok"], r["rel_error"]           # cnncore agrees with the reference
    assert [le["batch"] for le in res["lenet"]] == list(shapes.LENET_BATCHES)
    for le in res["lenet"]:
        assert le["per_impl"]["cnncore"]["images_per_s"] > 0
        assert le["ok"]
    assert res["summary"]["conv"]["min_speedup_reference"] > 0
    assert [m["batch"] for m in res["memory"]] == list(shapes.LENET_BATCHES)
    for m in res["memory"]:
        assert {"cnncore", "reference"} <= set(m["per_impl"]) and "torch" not in m["per_impl"]
        assert all(v["steps"] == 2 for v in m["per_impl"].values())


def _check_memory_entry(m, impl, batch, steps):
    assert (m["impl"], m["batch"], m["steps"]) == (impl, batch, steps)
    for key in ("step_mb", "total_mb", "rss_base_mb", "peak_mb"):
        assert isinstance(m[key], float) and m[key] >= 0, (key, m)
    assert m["total_mb"] > 0 and m["rss_built_mb"] > 0          # the process grew
    assert m["total_mb"] >= m["step_mb"]
    if impl == "torch":
        assert m["tracemalloc_mb"] is None                      # invisible to tracemalloc
    else:
        assert m["tracemalloc_mb"] > 0                          # a step allocates arrays


def test_memory_rows(tmp_path):
    """``--ops memory``: one fresh process per implementation; the rows are printed and in
    the JSON with positive sizes (torch too when it is installed)."""
    out = tmp_path / "mem.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cnncore.bench", "--smoke", "--ops", "memory", "--threads", "2",
         "--json", str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "peak memory" in proc.stdout and "cnncore.functional" in proc.stdout
    res = json.loads(out.read_text())
    assert res["rows"] == [] and res["lenet"] == []
    assert res["warnings"] == [] or all("memory" not in w for w in res["warnings"])
    (row,) = res["memory"]
    assert row["batch"] == 8
    expected = {"cnncore", "layers", "reference"}
    if res["torch"] is not None:
        expected.add("torch")
    assert set(row["per_impl"]) == expected
    for impl, m in row["per_impl"].items():
        _check_memory_entry(m, impl, 8, 1)
        assert m["memory_pool"] == (impl != "torch")  # NumPy steps run as Trainer.fit does
    losses = {m["first_loss"] for m in row["per_impl"].values()}
    assert max(losses) - min(losses) < 1e-4 * max(1.0, max(losses))  # same step everywhere
    if "torch" in row["per_impl"]:
        assert row["ratio_torch_total"]["cnncore"] > 0
        (summary,) = res["summary"]["memory"]
        assert summary["cnncore_total"] > 0 and summary["torch_total"] > 0


def test_memory_child_without_the_pool():
    m = memory.measure("cnncore", 8, steps=1, threads=1, memory_pool=False)
    _check_memory_entry(m, "cnncore", 8, 1)
    assert m["memory_pool"] is False

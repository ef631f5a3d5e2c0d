"""Tests of ``python -m cnncore.bench --ops models`` (whole zoo networks vs their torch twins).

As in test_bench.py, speed is never tested: only the plans of each mode, the command-line
rules, the helpers, that the smoke run writes the expected JSON and that the output check
can fail.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from cnncore.bench import models, timing
from cnncore.bench.__main__ import DEFAULT_OPS, build_parser, settings_from_args
from cnncore.bench.backends import import_torch

from test_bench import _env

torch = import_torch()
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


# ----------------------------------------------------------------------------- plans
def test_full_plan_covers_every_network():
    cases = models.plan("full")
    assert len(cases) == 3 * len(models.NETWORKS) == 39
    by = {c.name: c for c in cases}
    assert {"lenet5-infer-b1", "lenet5-infer-b16", "lenet5-train-b64", "resnet18-train-b32",
            "resnet18-cifar-train-b64", "vgg16_bn-train-b32", "densenet121-cifar-infer-b16",
            "alexnet-infer-b1", "resnet50-cifar-train-b64"} <= set(by)
    assert by["alexnet-infer-b1"].net.input_shape == (3, 227, 227)
    assert by["vgg11-cifar-infer-b1"].net.kwargs == {"variant": "cifar"}


def test_quick_and_smoke_plans():
    assert [c.name for c in models.plan("quick")] == [
        "lenet5-infer-b1", "lenet5-infer-b16", "lenet5-train-b64",
        "resnet18-cifar-infer-b1", "resnet18-cifar-infer-b16", "resnet18-cifar-train-b64",
        "resnet18-infer-b1",
        "vgg11-cifar-infer-b1", "vgg11-cifar-infer-b16", "vgg11-cifar-train-b64"]
    # --quick with --models: every case of those networks, small ImageNet training batches
    assert [c.name for c in models.plan("quick", ["resnet50"])] == [
        "resnet50-infer-b1", "resnet50-infer-b16", "resnet50-train-b8",
        "resnet50-cifar-infer-b1", "resnet50-cifar-infer-b16", "resnet50-cifar-train-b64"]
    smoke = models.plan("smoke")
    assert [c.name for c in smoke] == ["lenet5-infer-b1", "lenet5-train-b8",
                                       "resnet18-cifar-infer-b2", "resnet18-cifar-train-b4"]
    assert smoke[-1].net.kwargs["width"] == 8


def test_select_networks():
    assert [n.id for n in models.select_networks(["resnet18"])] == ["resnet18",
                                                                    "resnet18-cifar"]
    assert [n.id for n in models.select_networks(["vgg16_bn-cifar", "lenet5"])] == [
        "lenet5", "vgg16_bn-cifar"]
    with pytest.raises(ValueError, match="unknown resnet19"):
        models.select_networks(["resnet19"])
    with pytest.raises(ValueError, match="unknown vgg"):   # a prefix of names is not a name
        models.select_networks(["vgg"])


def test_cli_models_options():
    p = build_parser()
    default = settings_from_args(p.parse_args(["--threads", "1"]))
    assert default.ops == DEFAULT_OPS and "models" not in default.ops
    assert default.model_cases() == []
    quick = settings_from_args(p.parse_args(["--ops", "models", "--quick", "--threads", "2"]))
    assert quick.ops == ("models",) and quick.repeats == 3 and quick.models_min_repeats == 3
    assert len(quick.model_cases()) == 10 and quick.models_budget > 0
    assert quick.as_dict()["models_cases"][0] == "lenet5-infer-b1"
    sel = settings_from_args(p.parse_args(["--ops", "models", "--models", "resnet18-cifar",
                                           "--models-memory"]))
    assert sel.models == ("resnet18-cifar",) and sel.models_memory
    assert [c.net.id for c in sel.model_cases()] == ["resnet18-cifar"] * 3
    with pytest.raises(ValueError, match="need --ops models"):
        settings_from_args(p.parse_args(["--models", "lenet5"]))
    with pytest.raises(ValueError, match="unknown nope"):
        settings_from_args(p.parse_args(["--ops", "models", "--models", "nope"]))


# ----------------------------------------------------------------------------- helpers
def test_time_budgeted_stops_after_the_budget():
    ticks = iter(range(0, 1000, 5))    # every call takes 5 "seconds"
    calls = []
    s, result = models.time_budgeted(lambda: calls.append(1) or len(calls), warmup=1,
                                     repeats=10, budget=12, min_repeats=2,
                                     clock=lambda: next(ticks))
    assert s["n"] == 3 and s["cut"] and len(calls) == 4 and result == 4
    ticks = iter(range(0, 1000, 5))
    s, _ = models.time_budgeted(lambda: None, 0, 10, budget=1, min_repeats=4,
                                clock=lambda: next(ticks))
    assert s["n"] == 4                 # at least min_repeats
    ticks = iter(range(0, 1000, 5))
    s, _ = models.time_budgeted(lambda: None, 0, 2, budget=1000, clock=lambda: next(ticks))
    assert s["n"] == 2 and not s["cut"]


def _stubs(durations, faults_per_call=None):
    """Stub implementations on a fake clock: each call of ``name`` records itself and
    advances the clock by ``durations[name]`` (and a fake fault counter by
    ``faults_per_call[name]``); each returns (name, its call count)."""
    state = {"now": 0.0, "faults": 0, "calls": [], "sleeps": []}
    counts = {name: 0 for name in durations}

    def make(name):
        def fn():
            counts[name] += 1
            state["calls"].append(name)
            state["now"] += durations[name]
            state["faults"] += (faults_per_call or {}).get(name, 0)
            return name, counts[name]
        return fn
    fns = {name: make(name) for name in durations}
    kw = dict(clock=lambda: state["now"], faults=lambda: state["faults"],
              sleep=lambda t: state["sleeps"].append((len(state["calls"]), t)))
    return fns, state, kw


def test_time_interleaved_alternates_and_keeps_each_implementations_times():
    fns, state, kw = _stubs({"cnncore": 1.0, "torch": 3.0, "onnxruntime": 2.0},
                            {"cnncore": 10, "torch": 0, "onnxruntime": 4})
    times, last = timing.time_interleaved(fns, repeats=4, budget=1000, min_repeats=1,
                                          pause=0.02, rewarm=0, **kw)
    assert state["calls"] == ["cnncore", "torch", "onnxruntime"] * 4
    # a pause after every call, none inside a timed region (the clock did not move)
    assert state["sleeps"] == [(i, 0.02) for i in range(1, 13)]
    assert times["cnncore"]["times"] == [1.0] * 4 and times["torch"]["times"] == [3.0] * 4
    assert times["onnxruntime"]["median"] == 2.0 and times["torch"]["n"] == 4
    assert times["cnncore"]["minor_faults_per_call"] == 10
    assert times["torch"]["minor_faults_per_call"] == 0
    assert times["onnxruntime"]["minor_faults_per_call"] == 4
    assert not any(t["cut"] for t in times.values())
    assert last == {"cnncore": ("cnncore", 4), "torch": ("torch", 4),
                    "onnxruntime": ("onnxruntime", 4)}


def test_time_interleaved_rewarm_calls_are_untimed():
    """Each timed call follows ``rewarm`` untimed calls of the same implementation, back
    to back (no pause between them); only the timed ones make the median."""
    durations = {"cnncore": 1.0, "torch": 3.0}
    fns, state, kw = _stubs(durations)

    def after_switch(name, fn):
        def call():  # the first call after the other implementation is 10 s slower
            switched = state["calls"][-1:] != [name]
            state["now"] += 10.0 if switched else 0.0
            return fn()
        return call
    fns = {name: after_switch(name, fn) for name, fn in fns.items()}
    times, _ = timing.time_interleaved(fns, repeats=3, budget=1000, pause=0.5, rewarm=2, **kw)
    assert state["calls"] == ["cnncore"] * 3 + ["torch"] * 3 + ["cnncore"] * 3 + ["torch"] * 3 \
        + ["cnncore"] * 3 + ["torch"] * 3
    assert times["cnncore"]["times"] == [1.0] * 3 and times["torch"]["times"] == [3.0] * 3
    assert state["sleeps"] == [(i, 0.5) for i in range(3, 19, 3)]  # after timed calls only


def test_time_interleaved_budget_counts_every_implementation():
    # rounds of 1 + 3 = 4 s; budget 5 s per implementation = 10 s: stop after 3 rounds
    fns, state, kw = _stubs({"cnncore": 1.0, "torch": 3.0})
    times, _ = timing.time_interleaved(fns, repeats=10, budget=5, min_repeats=1, pause=0,
                                       rewarm=0, **kw)
    assert state["calls"] == ["cnncore", "torch"] * 3 and state["sleeps"] == []
    assert times["cnncore"]["n"] == times["torch"]["n"] == 3
    assert times["cnncore"]["cut"] and times["torch"]["cut"]
    fns, state, kw = _stubs({"cnncore": 1.0, "torch": 3.0})
    times, _ = timing.time_interleaved(fns, repeats=10, budget=0, min_repeats=4, pause=0,
                                       rewarm=0, **kw)
    assert times["cnncore"]["n"] == 4                # at least min_repeats rounds
    fns, state, kw = _stubs({"cnncore": 1.0})
    times, _ = timing.time_interleaved(fns, repeats=2, budget=1000, pause=0, faults=None,
                                       clock=kw["clock"])
    assert times["cnncore"]["n"] == 2 and not times["cnncore"]["cut"]
    assert times["cnncore"]["minor_faults_per_call"] is None
    with pytest.raises(ValueError):
        timing.time_interleaved({}, 1, 0)


def test_time_interleaved_short_calls_get_more_rounds():
    # 0.01 s and 0.03 s calls, 3 rounds asked, min_time 0.1 s: rounds go on until the
    # faster implementation's timed calls sum to 0.1 s (10 rounds)
    fns, state, kw = _stubs({"cnncore": 0.01, "torch": 0.03})
    times, _ = timing.time_interleaved(fns, repeats=3, budget=1000, pause=0, rewarm=0,
                                       min_time=0.1, **kw)
    assert times["cnncore"]["n"] == times["torch"]["n"] == 10
    assert times["cnncore"]["rounds"] == 10 and not times["cnncore"]["cut"]
    assert sum(times["cnncore"]["times"]) >= 0.1
    # max_repeats caps them, and the budget still stops long rows
    fns, state, kw = _stubs({"cnncore": 0.01, "torch": 0.03})
    times, _ = timing.time_interleaved(fns, repeats=3, budget=1000, pause=0, rewarm=0,
                                       min_time=0.1, max_repeats=6, **kw)
    assert times["cnncore"]["n"] == 6
    fns, state, kw = _stubs({"cnncore": 0.01, "torch": 0.03})
    times, _ = timing.time_interleaved(fns, repeats=3, budget=0.05, pause=0, rewarm=0,
                                       min_time=0.1, **kw)
    assert times["cnncore"]["n"] == 3  # 0.12 s of calls > 2 x 0.05 s after 3 rounds
    # long calls: repeats rounds only
    fns, state, kw = _stubs({"cnncore": 1.0, "torch": 3.0})
    times, _ = timing.time_interleaved(fns, repeats=3, budget=1000, pause=0, rewarm=0,
                                       min_time=0.5, **kw)
    assert times["torch"]["n"] == 3


def _recording(monkeypatch, log):
    """Wrap models.cnncore_call / torch_call so that every call is logged ("c" / "t"), with
    whether the cnncore memory pool was NumPy's allocator during it."""
    from cnncore.memory import pool_active
    for name, tag in (("cnncore_call", "c"), ("torch_call", "t")):
        def make(*args, real=getattr(models, name), tag=tag):
            fn = real(*args)

            def call():
                log.append((tag, pool_active()))
                return fn()
            return call
        monkeypatch.setattr(models, name, make)


@needs_torch
def test_run_case_interleaves_the_timed_calls(monkeypatch):
    torch.set_num_threads(1)
    log = []
    _recording(monkeypatch, log)
    kw = dict(warmup=2, repeats=3, budget=1000, min_repeats=1, settle=0, pause=0, rewarm=0)
    row = models.run_case(models.Case(models.NETWORKS[0], "infer", 2), torch, 1, **kw)
    # the warm-ups in each implementation's own block, then rounds c, t, c, t, c, t
    assert "".join(c for c, _ in log) == "cc" + "tt" + "ct" * 3
    # the pool stays NumPy's allocator for every cnncore call, timed ones included
    assert all(active for c, active in log if c == "c")
    assert row["interleaved"] and row["check"] == "ok"
    assert row["times"]["cnncore"]["n"] == row["times"]["torch"]["n"] == 3
    assert row["peak_mb"]["cnncore"] is None or row["peak_mb"]["cnncore"] >= 0
    # training: the checking step, the warm-up (at least one), the rounds, then the
    # float64 checking step of float64_grad_error (outside the timed region)
    log.clear()
    row = models.run_case(models.Case(models.NETWORKS[0], "train", 4), torch, 1,
                          **dict(kw, warmup=0, repeats=2))
    assert "".join(c for c, _ in log) == "cc" + "tt" + "ct" * 2 + "ct"
    assert row["check"] == "ok" and row["times"]["torch"]["n"] == 2
    # the default: one untimed call before each timed one
    log.clear()
    row = models.run_case(models.Case(models.NETWORKS[0], "infer", 2), torch, 1,
                          **dict(kw, rewarm=1))
    assert "".join(c for c, _ in log) == "cc" + "tt" + "cctt" * 3
    # interleave=False: one block per implementation, torch outside the pool
    log.clear()
    row = models.run_case(models.Case(models.NETWORKS[0], "infer", 2), torch, 1,
                          interleave=False, **kw)
    assert "".join(c for c, _ in log) == "c" * 5 + "t" * 5
    assert all(active for c, active in log if c == "c")
    assert not any(active for c, active in log if c == "t")
    assert not row["interleaved"] and row["times"]["torch"]["n"] == 3


def test_no_interleave_reaches_run_case(monkeypatch):
    from cnncore.bench import runner
    seen = []
    real = models.run_case

    def run_case(*args, **kwargs):
        seen.append((kwargs["interleave"], kwargs["pause"], kwargs["rewarm"],
                     kwargs["min_time"]))
        return real(*args, **kwargs)
    monkeypatch.setattr(models, "run_case", run_case)
    p = build_parser()
    base = ["--smoke", "--ops", "models", "--models", "lenet5", "--threads", "1",
            "--no-torch", "--no-ort"]
    for extra, want in (([], True), (["--no-interleave"], False)):
        seen.clear()
        s = settings_from_args(p.parse_args(base + extra))
        assert s.models_interleave is want and s.as_dict()["models_interleave"] is want
        lines = []
        res = runner.run(s, emit=lines.append)
        assert seen == [(want, 0.0, 0, 0.0)] * 2  # smoke: no re-warm calls, no extra rounds
        assert res["settings"]["models_interleave"] is want
        assert [r["interleaved"] for r in res["models"]] == [want] * 2
        header = [ln for ln in lines if "models rows:" in ln]
        assert len(header) == 1
        assert ("interleaved rounds" in header[0]) is want
        assert ("one block per implementation (--no-interleave)" in header[0]) is not want
    quick = settings_from_args(p.parse_args(["--ops", "models", "--quick"]))
    assert quick.models_rewarm == 1 and quick.models_pause == 0
    assert quick.models_min_time == 0.5
    with pytest.raises(ValueError, match="need --ops models"):
        settings_from_args(p.parse_args(["--no-interleave"]))


def test_rel_error():
    assert models.rel_error([1.0, -4.0], [1.0, -2.0]) == 1.0
    assert models.rel_error([0.0], [0.0]) == 0.0
    assert models.rel_error([1e-3], [0.0]) == float("inf")


def test_build_model_has_a_random_head():
    net = models.select_networks(["resnet18-cifar"])[0]
    model = models.build_model(models.Case(net, "infer", 1).net)
    assert np.abs(model.fc.weight.data).max() > 0           # the zoo's head starts at zero
    x, y = models.make_batch(net, 3)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.max() < 10


# ----------------------------------------------------------------------------- running
@needs_torch
def test_run_case_checks_and_can_fail(monkeypatch):
    torch.set_num_threads(1)
    case = models.Case(models.NETWORKS[0], "train", 4)
    row = models.run_case(case, torch, 1, warmup=0, repeats=2, budget=0, min_repeats=1,
                          settle=0)
    assert row["check"] == "ok" and row["rel_error"] < 1e-5 and row["grad_rel_error"] < 1e-4
    assert row["times"]["cnncore"]["n"] == 1 and set(row["times"]) == {"cnncore", "torch"}
    assert row["images_per_s"]["torch"] > 0 and row["ratio_torch"] > 0
    # a torch twin that computes something else is caught
    real = models.torch_call

    def off_by_one(*args):
        fn = real(*args)
        return lambda: fn() + 1
    monkeypatch.setattr(models, "torch_call", off_by_one)
    row = models.run_case(models.Case(models.NETWORKS[0], "infer", 2), torch, 1, warmup=0,
                          repeats=1, budget=0, min_repeats=1, settle=0)
    assert row["check"] == "MISMATCH" and row["rel_error"] > 1e-3


@needs_torch
def test_float32_training_rows_judge_gradients_in_float64(monkeypatch):
    """float32 gradients may differ by ReLU mask flips, so a float32 training row is judged
    by a float64 step; a twin whose gradients are wrong (scaled by 1.001, well inside the
    old float32 tolerance of 1e-2) is caught there."""
    torch.set_num_threads(1)
    case = models.Case(models.NETWORKS[0], "train", 4)
    kw = dict(warmup=0, repeats=1, budget=0, min_repeats=1, settle=0)
    row = models.run_case(case, torch, 1, **kw)
    assert row["check"] == "ok" and row["grad_rel_error_f64"] < 1e-12
    # a network with Dropout: the float64 step runs with it off on both sides
    alexnet = models.Net("alexnet-cifar", "AlexNet CIFAR w", "alexnet",
                         {"variant": "cifar"}, (3, 32, 32), large=False)
    row = models.run_case(models.Case(alexnet, "train", 2), torch, 1, **kw)
    assert row["check"] == "ok" and row["grad_rel_error_f64"] < 1e-12, row
    real = models.torch_call

    def scaled_gradients(torch_, tmodel, mode, x, labels):
        fn = real(torch_, tmodel, mode, x, labels)

        def step():
            out = fn()
            for p in tmodel.parameters():
                if p.grad is not None:
                    p.grad *= 1.001
            return out
        return step
    monkeypatch.setattr(models, "torch_call", scaled_gradients)
    row = models.run_case(case, torch, 1, **kw)
    assert row["check"] == "MISMATCH" and 1e-4 < row["grad_rel_error_f64"] < 1e-2


def _smoke(tmp_path, *extra):
    out = tmp_path / "models.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cnncore.bench", "--smoke", "--ops", "models", "--threads", "2",
         "--json", str(out), *extra], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_smoke_run_writes_json(tmp_path):
    stdout, res = _smoke(tmp_path)
    assert "whole networks" in stdout and "ResNet-18 CIFAR w8" in stdout
    assert res["rows"] == [] and res["lenet"] == [] and res["memory"] == []
    rows = res["models"]
    assert [r["name"] for r in rows] == [c.name for c in models.plan("smoke")]
    for r in rows:
        assert r["group"] == "models" and r["params"] > 0
        assert r["times"]["cnncore"]["median"] > 0 and r["images_per_s"]["cnncore"] > 0
        if res["torch"] is not None:
            assert r["check"] == "ok", r
            assert r["times"]["torch"]["median"] > 0 and r["ratio_torch"] > 0
            assert r["rel_error"] <= 1e-4
            assert ("grad_rel_error" in r) == (r["mode"] == "train")
        else:
            assert r["check"] == "no torch"
        for v in r["peak_mb"].values():
            assert v is None or v >= 0
    if res["torch"] is not None:
        assert res["summary"]["models"]["mismatches"] == 0
        assert res["summary"]["models"]["geomean_ratio"] > 0


def test_run_case_onnxruntime_column():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    case = models.Case(models.NETWORKS[0], "infer", 3)
    row = models.run_case(case, None, 1, warmup=0, repeats=1, budget=0, min_repeats=1,
                          settle=0, use_ort=True)
    assert set(row["times"]) == {"cnncore", "onnxruntime"}
    assert row["ort_rel_error"] < 1e-5 and row["ratio_ort"] > 0
    assert row["images_per_s"]["onnxruntime"] > 0
    # training rows have no ONNX Runtime column
    row = models.run_case(models.Case(models.NETWORKS[0], "train", 4), None, 1, warmup=0,
                          repeats=1, budget=0, min_repeats=1, settle=0, use_ort=True)
    assert "onnxruntime" not in row["times"] and "ratio_ort" not in row


def test_smoke_run_without_torch(tmp_path):
    stdout, res = _smoke(tmp_path, "--no-torch", "--no-ort", "--models", "lenet5")
    assert "cnncore columns only" in stdout
    assert [r["name"] for r in res["models"]] == ["lenet5-infer-b1", "lenet5-train-b4"]
    assert all(set(r["times"]) == {"cnncore"} and r["check"] == "no torch"
               for r in res["models"])


def test_fresh_process_memory():
    case = models.plan("smoke")[1]                      # LeNet-5 training, batch 8
    m = models.measure(case, "cnncore", steps=1, threads=1)
    assert m["case"] == "lenet5-train-b8" and m["steps"] == 1
    assert m["total_mb"] >= m["step_mb"] >= 0 and m["rss_built_mb"] > 0
    if torch is not None:
        t = models.measure(models.plan("smoke")[2], "torch", steps=1, threads=1)
        assert t["case"] == "resnet18-cifar-infer-b2" and t["total_mb"] >= 0


@needs_torch
def test_onnx_runtime_is_timed_after_the_rounds(monkeypatch):
    """ONNX Runtime's spinning workers slow whatever runs next: it gets one block of its
    own after the interleaved cnncore/torch rounds."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cnncore.onnx import bench as ort_bench
    torch.set_num_threads(1)
    log = []
    _recording(monkeypatch, log)
    real = ort_bench.ort_session

    def ort_session(*args, **kwargs):
        run = real(*args, **kwargs)
        return lambda x: log.append(("o", None)) or run(x)
    monkeypatch.setattr(ort_bench, "ort_session", ort_session)
    kw = dict(warmup=1, repeats=2, budget=1000, min_repeats=1, settle=0, rewarm=1)
    row = models.run_case(models.Case(models.NETWORKS[0], "infer", 2), torch, 1,
                          use_ort=True, **kw)
    assert "".join(c for c, _ in log) == "c" + "t" + "cctt" * 2 + "o" * 3
    assert row["times"]["onnxruntime"]["n"] == 2 and row["check"] == "ok"


@needs_torch
def test_rows_too_big_to_interleave_fall_back_to_blocks(monkeypatch):
    """A row whose cnncore peak, counted twice, exceeds the share of available memory is
    timed in blocks, the pool left before torch runs (VGG-16-BN training at batch 32 held
    both peaks and the OOM killer ended the run)."""
    torch.set_num_threads(1)
    log = []
    _recording(monkeypatch, log)
    monkeypatch.setattr(models, "INTERLEAVE_MEMORY_SHARE", -1.0)
    kw = dict(warmup=2, repeats=3, budget=1000, min_repeats=1, settle=0, pause=0, rewarm=0)
    row = models.run_case(models.Case(models.NETWORKS[0], "infer", 2), torch, 1, **kw)
    # the interleaved warm-up, then the block's warm-up and timed calls; torch in a block
    assert "".join(c for c, _ in log) == "c" * 2 + "c" * 5 + "t" * 5
    assert all(active for c, active in log if c == "c")
    assert not any(active for c, active in log if c == "t")
    assert not row["interleaved"] and row["check"] == "ok"
    assert row["times"]["cnncore"]["n"] == row["times"]["torch"]["n"] == 3


def test_float64_check_batch_is_capped(monkeypatch):
    seen = []
    real = models.make_batch
    monkeypatch.setattr(models, "make_batch",
                        lambda net, batch, *a, **k: seen.append(batch) or real(net, batch, *a, **k))
    pytest.importorskip("torch")
    models.float64_grad_error(models.Case(models.NETWORKS[0], "train", 64), torch)
    assert seen == [models.FLOAT64_CHECK_BATCH]

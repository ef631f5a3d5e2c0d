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

from cnncore.bench import models
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

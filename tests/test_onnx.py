"""cnncore.onnx: export -> onnx.checker + shape inference -> ONNX Runtime for every zoo family,
export -> load round trips, hand-written ONNX graphs and PyTorch exports -> load, loaded
models training and saving, and the errors for what cannot be converted.

Needs the onnx and onnxruntime packages (``pip install "cnncore[onnx]" onnxruntime``; .ci/run
installs them); the PyTorch tests also need torch."""

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="cnncore.onnx needs the onnx package "
                                          "(pip install 'cnncore[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests compare with onnxruntime "
                                                "(pip install onnxruntime)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cnncore  # noqa: E402
from cnncore import set_num_threads, zoo  # noqa: E402
from cnncore.layers import (Add, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d,  # noqa: E402
                            Concat, Concatenate, Conv1d, Conv2d, Dropout, Flatten,
                            GlobalAvgPool2d, Graph, Layer, LeakyReLU, Linear,
                            LocalResponseNorm, MaxPool2d, ReLU, Residual, Sequential, Sigmoid,
                            Softmax, Tanh, ZeroPad2d)
from cnncore.losses import SoftmaxCrossEntropy  # noqa: E402
from cnncore.onnx import export, load, to_model_proto  # noqa: E402
from cnncore.onnx.load import UnsupportedOperators  # noqa: E402
from cnncore.optim import SGD  # noqa: E402
from cnncore.trainer import Trainer  # noqa: E402

RTOL = 1e-5  # relative to the output's scale (max |y|)


@pytest.fixture(autouse=True)
def _one_thread():
    set_num_threads(1)


def randomize(model, seed=0):
    """Random weights, biases and BatchNorm statistics (the zoo starts its classifier at
    zero and its BatchNorms at the identity, which would hide mistakes)."""
    r = np.random.default_rng(seed)
    for _, layer in model.named_layers():
        for p in layer._params.values():
            fan_in = int(np.prod(p.shape[1:])) if p.data.ndim > 1 else 1
            p.data[...] = r.standard_normal(p.shape) * (np.sqrt(2.0 / fan_in) if p.data.ndim > 1
                                                        else 0.2)
            if isinstance(layer, (BatchNorm1d, BatchNorm2d)) and p.name == "weight":
                p.data[...] = r.uniform(0.5, 1.5, p.shape)
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            layer.set_buffer("running_mean", r.normal(0, 0.2, layer.num_features).astype(
                layer.running_mean.dtype))
            layer.set_buffer("running_var", r.uniform(0.5, 2.0, layer.num_features).astype(
                layer.running_var.dtype))
    return model.eval()


def session(model_or_bytes):
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else \
        model_or_bytes.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run_ort(model_or_bytes, x):
    s = session(model_or_bytes)
    return s.run(None, {s.get_inputs()[0].name: x})


def assert_matches(actual, expected, rtol=RTOL, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = float(np.abs(expected).max())
    assert scale > 0, f"{what}: the reference output is all zeros"
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= rtol, f"{what}: max error {err:.2e} x output scale (allowed {rtol:.0e})"


def full_check(proto):
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type.shape
    assert out.dim[0].dim_param == "N"


ZOO = {
    "lenet5": lambda: zoo.lenet5(),
    "alexnet-cifar": lambda: zoo.alexnet(variant="cifar"),
    "vgg11-cifar": lambda: zoo.vgg(11, variant="cifar", width=8),
    "vgg11_bn-cifar": lambda: zoo.vgg(11, variant="cifar", width=8, batch_norm=True),
    "resnet18-cifar": lambda: zoo.resnet(18, variant="cifar", width=8),
    "resnet18-imagenet-64px": lambda: zoo.resnet(18, width=4, input_size=64),
    "resnet50-cifar": lambda: zoo.resnet(50, variant="cifar", width=4),
    "densenet121-cifar": lambda: zoo.densenet(121, variant="cifar", growth_rate=4),
    "densenet121-imagenet-64px": lambda: zoo.densenet(121, growth_rate=4, input_size=64),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_export_checks_and_matches_onnxruntime(name, tmp_path, rng):
    model = randomize(ZOO[name]())
    path = tmp_path / f"{name}.onnx"
    proto = export(model, path)
    full_check(onnx.load(str(path)))
    x = rng.standard_normal((2,) + model.input_shape).astype(np.float32)
    y = model.forward(x)
    assert_matches(run_ort(proto, x)[0], y, what=f"{name} onnxruntime")
    # ... and the file loads back into cnncore, computing the same.
    back = load(path)
    assert back.input_shape == model.input_shape
    assert isinstance(back, Graph if name.startswith(("resnet", "densenet")) else Sequential)
    assert back.num_parameters() == model.num_parameters()
    assert_matches(back.forward(x), y, rtol=1e-6, what=f"{name} round trip")


# The full-size zoo takes minutes and several GB: part of the long profile (`pytest -m fuzz`,
# deselected by default like the other long checks) rather than a skip in every run.
@pytest.mark.fuzz
@pytest.mark.parametrize("name", zoo.list_models())
def test_full_size_zoo_matches_onnxruntime(name, rng):
    model = randomize(zoo.get_model(name))
    proto = to_model_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    x = rng.standard_normal((1,) + model.input_shape).astype(np.float32)
    assert_matches(run_ort(proto, x)[0], model.forward(x), what=f"{name} onnxruntime")


@pytest.mark.parametrize("layers,shape", [
    pytest.param(lambda: [Conv2d(3, 6, 3, stride=2, padding=1, dilation=1, groups=3),
                          BatchNorm2d(6), LeakyReLU(0.2), ZeroPad2d((1, 0, 0, 2)),
                          AvgPool2d(3, 1, padding=1, count_include_pad=False), Tanh(),
                          AvgPool2d(2), LocalResponseNorm(3, k=2.0), Flatten(),
                          Dropout(0.3), Linear(6 * 3 * 2, 5), BatchNorm1d(5), Sigmoid(),
                          Softmax()], (3, 8, 7), id="layers"),
    pytest.param(lambda: [Conv2d(2, 4, 3, padding=2, dilation=2), MaxPool2d(3, 2, padding=1),
                          AdaptiveAvgPool2d((3, 5)), GlobalAvgPool2d()], (2, 9, 9),
                 id="adaptive-matrix"),
    pytest.param(lambda: [Conv1d(2, 4, 3, stride=2, padding=1), ReLU(), Flatten(),
                          Linear(16, 3)], (2, 8), id="conv1d"),
    pytest.param(lambda: [Residual([Conv2d(3, 3, 3, padding=1), Tanh()]),
                          Concat(Conv2d(3, 2, 1), Sequential(Conv2d(3, 1, 3, padding=1))),
                          AdaptiveAvgPool2d(2), Flatten()], (3, 4, 4), id="containers"),
])
def test_layers_export_and_round_trip(layers, shape, rng):
    model = randomize(Sequential(*layers()), seed=1)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    proto = to_model_proto(model, shape)
    full_check(proto)
    y = model.forward(x)
    assert_matches(run_ort(proto, x)[0], y, what="onnxruntime")
    assert_matches(load(proto).forward(x), y, rtol=1e-6, what="round trip")


def dag():
    g = Graph(input="image")
    g.add(Conv2d(3, 4, 3, padding=1, rng=0), "image", name="stem")
    g.add(ReLU(), "stem", name="act")
    g.add(Conv2d(4, 4, 3, padding=1, rng=1), "act", name="branch")
    g.add(Add(), ["act", "branch"], name="sum")
    g.add(Conv2d(3, 2, 1, rng=2), "image", name="skip")
    g.add(Concatenate(), ["act", "sum", "skip"], name="cat")
    g.add(GlobalAvgPool2d(), "cat", name="pool")
    g.add(Linear(10, 5, rng=3), "pool", name="fc")
    return g


def test_graph_exports_and_loads_as_a_graph(rng):
    g = randomize(dag(), seed=2)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    proto = to_model_proto(g, (3, 6, 6))
    full_check(proto)
    assert_matches(run_ort(proto, x)[0], g.forward(x), what="graph onnxruntime")
    back = load(proto)
    assert isinstance(back, Graph)
    kinds = [type(layer).__name__ for _, layer, _ in back.nodes]
    for kind, count in (("Conv2d", 3), ("Add", 1), ("Concatenate", 1), ("Linear", 1)):
        assert kinds.count(kind) == count, kinds
    assert_matches(back.forward(x), g.forward(x), rtol=1e-6, what="graph round trip")


def test_graph_with_two_outputs(rng):
    g = randomize(dag(), seed=3)
    g.output("fc", "pool")
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    proto = to_model_proto(g, (3, 5, 5))
    assert [o.name for o in proto.graph.output] == ["output0", "output1"]
    ys = g.forward(x)
    for got, want in zip(run_ort(proto, x), ys):
        assert_matches(got, want, what="two outputs")
    back = load(proto)
    assert back.outputs and len(back.outputs) == 2
    for got, want in zip(back.forward(x), ys):
        assert_matches(got, want, rtol=1e-6, what="two outputs round trip")


def test_static_batch_and_float64():
    model = Sequential(Conv2d(1, 2, 3), Flatten())
    proto = to_model_proto(model, (1, 5, 5), dynamic_batch=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    proto64 = to_model_proto(model.astype(np.float64), (1, 5, 5))
    onnx.checker.check_model(proto64, full_check=True)
    assert proto64.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert load(proto64).dtype == np.float64


class Mystery(Layer):
    def forward(self, x):
        return x * 2


def test_unexportable_layers_are_all_named():
    model = Sequential(Conv2d(1, 2, 3), Mystery(), Residual([Mystery()]),
                       LocalResponseNorm(4), Flatten())
    with pytest.raises(ValueError) as info:
        to_model_proto(model, (1, 6, 6))
    msg = str(info.value)
    assert "3 layer(s) cannot be exported" in msg
    for where in ("- 1 (Mystery)", "- 2.body.0 (Mystery)", "- 3 (LocalResponseNorm): an even"):
        assert where in msg, msg
    with pytest.raises(ValueError, match="pass input_shape"):
        to_model_proto(Sequential(ReLU()))
    with pytest.raises(ValueError, match="opset must be in 13"):
        to_model_proto(zoo.lenet5(), opset=11)


# ---------------------------------------------------------------------------- hand-written ONNX
def make_model(nodes, inits, in_shape, out_shape, opset=17):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def test_hand_written_graph_with_the_import_only_operators(rng):
    """auto_pad SAME_UPPER with an even kernel, uneven Conv pads, ceil_mode MaxPool, MatMul +
    Add (a bias), Gemm with alpha / beta and transB=0, Reshape(N, -1), Sum, Pad, Identity."""
    f32 = np.float32
    inits = {"w1": rng.standard_normal((4, 2, 2, 2)).astype(f32),
             "w2": rng.standard_normal((4, 4, 3, 3)).astype(f32),
             "b2": rng.standard_normal(4).astype(f32),
             "shape": np.array([0, -1], np.int64),
             "m": rng.standard_normal((4 * 3 * 3, 6)).astype(f32),
             "mb": rng.standard_normal((1, 6)).astype(f32),
             "g": rng.standard_normal((6, 3)).astype(f32),
             "gc": rng.standard_normal(3).astype(f32),
             "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64)}
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], auto_pad="SAME_UPPER", name="c1"),  # pads 0 / 1
        node("Relu", ["c1"], ["r1"], name="r1"),                                # 4x7x7
        node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 0, 0, 1], name="c2"),  # 4x6x6
        node("Identity", ["c2"], ["c2i"], name="id"),
        node("MaxPool", ["r1"], ["r1p"], kernel_shape=[2, 2], strides=[1, 1], name="mp"),
        node("Pad", ["r1p", "pads"], ["r1q"], name="pad"),                      # 4x7x7
        node("AveragePool", ["r1q"], ["r1a"], kernel_shape=[2, 2], strides=[1, 1],
             name="avg"),                                                       # 4x6x6
        node("Sum", ["c2i", "r1a"], ["s"], name="sum"),
        node("MaxPool", ["s"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
             name="pool"),                                                      # 4x3x3
        node("Reshape", ["p", "shape"], ["flat"], name="reshape"),
        node("MatMul", ["flat", "m"], ["mm"], name="mm"),
        node("Add", ["mm", "mb"], ["fc"], name="bias"),
        node("Gemm", ["fc", "g", "gc"], ["y"], alpha=0.5, beta=2.0, name="gemm"),
    ]
    proto = make_model(nodes, inits, ["N", 2, 7, 7], ["N", 3])
    onnx.checker.check_model(proto, full_check=True)
    x = rng.standard_normal((3, 2, 7, 7)).astype(np.float32)
    want = run_ort(proto, x)[0]
    model = load(proto)
    assert isinstance(model, Graph)
    assert_matches(model.forward(x), want, what="hand-written graph")
    kinds = [type(layer).__name__ for _, layer, _ in model.nodes]
    assert "Add" in kinds and kinds.count("Linear") == 2 and "ZeroPad2d" in kinds
    assert model["mm"].bias is not None  # MatMul + Add became one Linear


def test_unsupported_operators_are_all_listed():
    f32 = np.float32
    nodes = [helper.make_node("Exp", ["x"], ["e"], name="exp1"),
             helper.make_node("Relu", ["e"], ["r"], name="after_exp"),
             helper.make_node("Mul", ["r", "x"], ["m"], name="mul1"),
             helper.make_node("LRN", ["x"], ["l"], size=4, name="lrn_even"),
             helper.make_node("Flatten", ["x"], ["f"], axis=2, name="flat2"),
             helper.make_node("Flatten", ["m"], ["y"], axis=1, name="ok")]
    proto = make_model(nodes, {"unused": np.zeros(1, f32)}, ["N", 2, 3, 3], ["N", 18])
    with pytest.raises(UnsupportedOperators) as info:
        load(proto)
    msg = str(info.value)
    assert "4 node(s) cannot be converted (operators: Exp, Flatten, LRN, Mul)" in msg
    for line in ("Exp (node 'exp1', #0): no cnncore layer", "Mul (node 'mul1', #2)",
                 "LRN (node 'lrn_even', #3): an even size", "Flatten (node 'flat2', #4): axis=2"):
        assert line in msg, msg
    assert "after_exp" not in msg  # supported; it only reads an unsupported node's output
    assert [p[0] for p in info.value.problems] == ["Exp", "Mul", "LRN", "Flatten"]


def test_load_refuses_several_inputs_and_bad_files(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    with pytest.raises(ValueError, match="2 inputs"):
        load(helper.make_model(graph))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file at all")
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        load(bad)


# ---------------------------------------------------------------------------- PyTorch exports
def torch_models():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class DagNet(nn.Module):
        """Conv-BN-ReLU, ceil-mode max pool, a dilated grouped conv in a residual block, a
        DenseNet-style concat, adaptive pool, x.view(x.size(0), -1), dropout, two Linear."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
            self.bn2 = nn.BatchNorm2d(8)
            self.conv3 = nn.Conv2d(8, 8, 1)
            self.avg = nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)
            self.fc1 = nn.Linear(16, 12)
            self.drop = nn.Dropout(0.3)
            self.fc2 = nn.Linear(12, 5)

        def forward(self, x):
            x = self.pool(F.relu(self.bn1(self.conv1(x))))
            y = F.relu(self.bn2(self.conv2(x)))
            x = x + self.conv3(y)
            x = torch.cat([x, F.leaky_relu(self.avg(x), 0.2)], 1)
            x = F.adaptive_avg_pool2d(x, 1)
            x = x.view(x.size(0), -1)
            return self.fc2(self.drop(torch.sigmoid(self.fc1(x))))

    chain = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 6, 2, stride=1),
                          nn.BatchNorm2d(6), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 4, 3),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.Softmax(dim=1))
    return torch, {"dag": (DagNet(), (3, 13, 13)), "chain": (chain, (3, 12, 12))}


def torch_export(torch, model, shape, folding, seed=0):
    torch.manual_seed(seed)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    model.eval()
    x = torch.randn((1,) + shape)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17,
                          do_constant_folding=folding, training=torch.onnx.TrainingMode.EVAL,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return f.getvalue()


@pytest.mark.parametrize("folding", [False, True], ids=["bn-kept", "constant-folding"])
@pytest.mark.parametrize("which", ["dag", "chain"])
def test_pytorch_export_loads_and_matches_torch(which, folding, rng):
    torch, models = torch_models()
    model, shape = models[which]
    data = torch_export(torch, model, shape, folding)
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert ("BatchNormalization" in ops) != folding  # folding puts BN into the Conv
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    loaded = load(data)
    assert isinstance(loaded, Sequential if which == "chain" else Graph)
    assert loaded.input_shape == shape
    assert_matches(loaded.forward(x), want, what=f"torch {which}")


def test_a_loaded_model_trains_and_saves(tmp_path, rng):
    torch, models = torch_models()
    model, shape = models["dag"]
    loaded = load(torch_export(torch, model, shape, folding=False))
    assert sum(isinstance(layer, BatchNorm2d) for _, layer, _ in loaded.nodes) == 2
    x = rng.standard_normal((48,) + shape).astype(np.float32)
    y = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64) + 2 * (x[:, 1].mean(axis=(1, 2)) > 0)
    loaded.train()
    trainer = Trainer(loaded, SoftmaxCrossEntropy(),
                      SGD(loaded.parameters(), lr=0.05, momentum=0.9), seed=0)
    before = trainer.evaluate(x, y)["loss"]
    trainer.fit(x, y, epochs=6, batch_size=16, verbose=0)
    after = trainer.evaluate(x, y)["loss"]
    assert np.isfinite(after) and after < before
    path = tmp_path / "loaded.npz"
    loaded.save(path)
    again = cnncore.load(path)
    np.testing.assert_array_equal(again.predict(x), loaded.predict(x))
    # and the trained model exports again
    assert_matches(run_ort(to_model_proto(loaded), x)[0], loaded.predict(x), what="re-export")


# ---------------------------------------------------------------------------- bench
def test_ort_session_and_compare(rng):
    from cnncore.onnx.bench import compare, ort_available, ort_session
    assert ort_available()
    model = randomize(zoo.lenet5())
    run = ort_session(model, threads=1)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert_matches(run(x), model.forward(x), what="ort_session")
    assert run.session.get_session_options().intra_op_num_threads == 1
    res = compare(model, batch_size=2, threads=1, repeats=2, warmup=0)
    assert set(res) == {"cnncore", "onnxruntime", "ratio", "max_rel_diff"}
    assert res["max_rel_diff"] <= RTOL and res["ratio"] > 0
    with pytest.raises(ValueError, match="optimization must be one of"):
        ort_session(model, optimization="max")


# ---------------------------------------------------------------------------- packaging
def test_cnncore_imports_without_onnx():
    code = ("import sys; sys.modules['onnx'] = None; import cnncore, cnncore.onnx;"
            "from cnncore import zoo\n"
            "try:\n    cnncore.onnx.export(zoo.lenet5(), 'x.onnx')\n"
            "except ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "cnncore.onnx.export needs the onnx package: pip install \"cnncore[onnx]\"" in out

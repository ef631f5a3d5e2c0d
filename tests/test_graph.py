"""cnncore.layers.Graph: a DAG container (fan-out, Add, Concatenate, several outputs),
its gradients against central differences, summary, save/load, training, and the errors for
graphs it refuses; the padding layers ConstantPad2d / ZeroPad2d."""

import numpy as np
import pytest

from _gradcheck import check_gradient

import cnncore
from cnncore import set_num_threads
from cnncore.layers import (Add, BatchNorm2d, Concatenate, ConstantPad2d, Conv2d, Flatten,
                            GlobalAvgPool2d, Graph, Linear, MaxPool2d, ReLU, Residual,
                            Sequential, Tanh, ZeroPad2d)
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import SGD
from cnncore.trainer import Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    set_num_threads(1)


def dag(seed=0, dtype=np.float64):
    """input -> stem -> act; act fans out to branch, sum and cat; a residual Add and a
    channel Concatenate; the graph input is also read by a second node (skip)."""
    r = np.random.default_rng(seed)
    g = Graph()
    g.add(Conv2d(3, 4, 3, padding=1, rng=r, dtype=dtype), "input", name="stem")
    g.add(Tanh(), "stem", name="act")
    g.add(Conv2d(4, 4, 3, padding=1, rng=r, dtype=dtype), "act", name="branch")
    g.add(Add(), ["act", "branch"], name="sum")
    g.add(Conv2d(3, 2, 1, rng=r, dtype=dtype), "input", name="skip")
    g.add(Concatenate(), ["act", "sum", "skip"], name="cat")
    g.add(GlobalAvgPool2d(), "cat", name="pool")
    g.add(Linear(10, 5, rng=r, dtype=dtype), "pool", name="fc")
    return g


def reference_forward(g, x):
    """The same computation written out by hand with the graph's layers."""
    stem = g["stem"].forward(x)
    act = np.tanh(stem)
    branch = g["branch"].forward(act)
    s = act + branch
    skip = g["skip"].forward(x)
    cat = np.concatenate([act, s, skip], axis=1)
    return g["fc"].forward(cat.mean(axis=(2, 3)))


def test_forward_matches_the_hand_written_computation(rng):
    g = dag()
    x = rng.standard_normal((2, 3, 5, 5))
    y = g.forward(x)
    np.testing.assert_allclose(y, reference_forward(g, x), rtol=1e-12, atol=1e-12)
    assert g.output_shape((3, 5, 5)) == (5,)


def test_gradients_sum_over_fan_out(rng):
    """'act' feeds three nodes and 'input' two: their gradients must be summed."""
    g = dag()
    x = rng.standard_normal((2, 3, 4, 4))
    w = rng.standard_normal((2, 5))
    g.zero_grad()
    g.forward(x)
    gx = g.backward(w)
    check_gradient(lambda x_: g.forward(x_), [x], 0, gx, w, name="graph grad_x")
    for name, p in g.named_parameters():
        analytic, original = p.grad.copy(), p.data.copy()

        def fn(v, p=p):
            p.data[...] = v
            return g.forward(x)

        check_gradient(fn, [original], 0, analytic, w, name=f"graph grad {name}")
        p.data[...] = original


def test_backward_params_matches_backward(rng):
    a, b = dag(), dag()
    x = rng.standard_normal((2, 3, 4, 4))
    w = rng.standard_normal((2, 5))
    a.forward(x)
    b.forward(x)
    assert a.backward(w).shape == x.shape
    assert b.backward_params(w) is None
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(pa.grad, pb.grad, rtol=1e-12, atol=1e-14, err_msg=name)


def test_graph_equals_the_residual_container(rng):
    conv = Conv2d(3, 3, 3, padding=1, rng=0, dtype=np.float64)
    res = Residual([conv, Tanh()])
    g = Graph()
    g.add(Conv2d(3, 3, 3, padding=1, rng=0, dtype=np.float64), name="conv")
    g.add(Tanh(), name="tanh")
    g.add(Add(), ["input", "tanh"], name="add")
    x = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(g.forward(x), res.forward(x), rtol=1e-12)
    w = rng.standard_normal(x.shape)
    np.testing.assert_allclose(g.backward(w), res.backward(w), rtol=1e-12)
    np.testing.assert_allclose(g["conv"].weight.grad, conv.weight.grad, rtol=1e-12)


def test_several_outputs(rng):
    g = Graph(input="image")
    g.add(Conv2d(1, 2, 3, padding=1, rng=0, dtype=np.float64), "image", name="conv")
    g.add(ReLU(), name="relu")
    g.add(GlobalAvgPool2d(), "relu", name="features")
    g.add(Linear(2, 3, rng=0, dtype=np.float64), "features", name="logits")
    g.output("logits", "features")
    x = rng.standard_normal((2, 1, 4, 4))
    logits, feats = g.forward(x)
    assert logits.shape == (2, 3) and feats.shape == (2, 2)
    assert g.output_shape((1, 4, 4)) == ((3,), (2,))
    wl, wf = rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
    gx = g.backward((wl, wf))

    def both(x_):
        a, b = g.forward(x_)
        return np.concatenate([a, b], axis=1)

    check_gradient(both, [x], 0, gx, np.concatenate([wl, wf], axis=1), name="two outputs")
    # None: that output has no gradient; the logits head then gets no parameter gradient.
    g.zero_grad()
    g.forward(x)
    gx_f = g.backward((None, wf))
    assert not g["logits"].weight.grad.any()
    check_gradient(lambda x_: g.forward(x_)[1], [x], 0, gx_f, wf, name="features only")
    with pytest.raises(ValueError, match="2 outputs"):
        g.backward(wl)


def test_summary_lists_every_node_with_shapes():
    text = dag(dtype=np.float32).summary((3, 6, 6), print_fn=None)
    for line in ("stem (Conv2d)", "(None, 4, 6, 6)", "sum (Add)", "cat (Concatenate)",
                 "(None, 10, 6, 6)", "fc (Linear)", "(None, 5)"):
        assert line in text, line
    assert f"Total params: {dag().num_parameters():,}" in text


def test_save_load_round_trip(tmp_path, rng):
    g = Sequential(dag(dtype=np.float32), ReLU())  # a graph nested in a Sequential
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    g.eval()
    path = tmp_path / "graph.npz"
    g.save(path)
    h = cnncore.load(path)
    assert isinstance(h[0], Graph)
    assert h[0].get_config() == g[0].get_config()
    np.testing.assert_array_equal(h.forward(x), g.forward(x))


def test_a_graph_trains(rng):
    g = Graph()
    g.add(Conv2d(1, 4, 3, padding=1, rng=0), name="c1")
    g.add(BatchNorm2d(4), name="bn")
    g.add(ReLU(), name="r")
    g.add(Conv2d(4, 4, 3, padding=1, rng=1), name="c2")
    g.add(Add(), ["r", "c2"], name="res")
    g.add(MaxPool2d(2), name="pool")
    g.add(Flatten(), name="flat")
    g.add(Linear(4 * 4 * 4, 2, rng=2), name="fc")
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    trainer = Trainer(g, SoftmaxCrossEntropy(), SGD(g.parameters(), lr=0.1, momentum=0.9),
                      seed=0)
    first = trainer.evaluate(x, y)["loss"]
    trainer.fit(x, y, epochs=8, batch_size=16, verbose=0)
    assert trainer.evaluate(x, y)["loss"] < 0.7 * first


def test_unused_branches_are_refused_with_their_names():
    g = Graph()
    g.add(Conv2d(1, 2, 3), name="a")
    g.add(ReLU(), "a", name="dead")
    g.add(Tanh(), "a", name="out")
    with pytest.raises(ValueError, match=r"\['dead'\] do not lead to any output"):
        g.forward(np.zeros((1, 1, 4, 4), np.float32))
    g.output("out", "dead")  # listing it as an output makes it legal
    assert len(g.forward(np.zeros((1, 1, 4, 4), np.float32))) == 2


@pytest.mark.parametrize("build,match", [
    (lambda g: g.add(ReLU(), "nope"), r"unknown input\(s\) \['nope'\]"),
    (lambda g: g.add(ReLU(), ["input", "input"]), "takes one input"),
    (lambda g: g.add(Add(), "input"), "merges two or more"),
    (lambda g: g.add(ReLU(), name="input"), "already used"),
    (lambda g: g.add(ReLU(), name="a.b"), "without dots"),
    (lambda g: g.output("nope"), "not nodes"),
])
def test_building_errors(build, match):
    g = Graph()
    with pytest.raises(ValueError, match=match):
        build(g)


def test_one_layer_is_one_node_and_names_default_to_the_class():
    g = Graph()
    relu = ReLU()
    assert g.add(relu) == "relu"
    assert g.add(ReLU()) == "relu_1"
    with pytest.raises(ValueError, match="already a node"):
        g.add(relu)
    with pytest.raises(ValueError, match="no nodes"):
        Graph().forward(np.zeros((1, 2)))


def test_merge_layers_check_shapes():
    with pytest.raises(ValueError, match="differ"):
        Add().forward([np.zeros((1, 2)), np.zeros((1, 3))])
    with pytest.raises(ValueError, match="outside axis 1"):
        Concatenate().output_shape([(2, 3, 3), (2, 4, 4)])
    with pytest.raises(ValueError, match="list of at least two inputs"):
        Add().forward(np.zeros((1, 2)))


@pytest.mark.parametrize("layer", [ZeroPad2d((1, 0, 2, 1)), ConstantPad2d(1, value=-3.0)])
def test_padding_layers(layer, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y = layer.forward(x)
    left, right, top, bottom = layer.padding
    assert y.shape == (2, 3, 4 + top + bottom, 5 + left + right)
    assert layer.output_shape((3, 4, 5)) == y.shape[1:]
    np.testing.assert_array_equal(y[:, :, top:top + 4, left:left + 5], x)
    assert np.all(y[:, :, :top] == layer.value)
    w = rng.standard_normal(y.shape)
    check_gradient(lambda x_: layer.forward(x_), [x], 0, layer.backward(w), w, name="pad")
    assert type(layer).from_config({"config": layer.get_config()}).padding == layer.padding


def test_to_torch_runs_the_same_graph(rng):
    torch = pytest.importorskip("torch")
    from cnncore.interop import to_torch, torch_state_dict
    g = Sequential(dag(dtype=np.float32), ZeroPad2d((1, 0, 0, 1)))
    g[0].output("fc", "cat")
    g = g[0]
    tg = to_torch(g.eval())
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    with torch.no_grad():
        got = tg(torch.from_numpy(x))
    for a, b in zip(got, g.forward(x)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)
    assert list(tg.state_dict()) == list(torch_state_dict(g))
    pad = to_torch(ZeroPad2d((1, 0, 0, 1)))
    np.testing.assert_array_equal(pad(torch.from_numpy(x)).numpy(),
                                  ZeroPad2d((1, 0, 0, 1)).forward(x))

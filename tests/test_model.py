"""Model-level behaviour: summary, LeNet-5, whole-model gradient check, modes, state."""

import numpy as np
import pytest

from _gradcheck import check_gradient
from cnncore import set_num_threads
from cnncore.layers import (BatchNorm2d, Concat, Conv2d, Dropout, Flatten, GlobalAvgPool2d,
                            Identity, Linear, MaxPool2d, ReLU, Residual, Sequential)
from cnncore.losses import MSE, SoftmaxCrossEntropy
from cnncore.model import lenet5, predict, summary


@pytest.fixture(autouse=True)
def _one_thread():
    """The arrays here are tiny: extra threads only add synchronisation, which stalls badly
    on a busy machine (conftest restores the setting after each test)."""
    set_num_threads(1)


def test_lenet5_summary_contents():
    model = lenet5()
    text = summary(model, print_fn=None)
    # Parameter counts from the architecture: (in*k*k + 1) * out per conv, (in + 1) * out per linear.
    counts = [(1 * 25 + 1) * 6, (6 * 25 + 1) * 16, (400 + 1) * 120, (120 + 1) * 84, (84 + 1) * 10]
    assert sum(counts) == 61706
    assert "Total params: 61,706" in text
    assert "Trainable params: 61,706" in text
    for n in counts:
        assert f"{n:,}" in text
    for shape in ["(None, 6, 28, 28)", "(None, 6, 14, 14)", "(None, 16, 10, 10)",
                  "(None, 16, 5, 5)", "(None, 400)", "(None, 120)", "(None, 84)", "(None, 10)"]:
        assert shape in text
    lines = text.splitlines()
    layer_lines = [ln for ln in lines if "(None," in ln]
    assert len(layer_lines) == 12
    assert "Conv2d" in layer_lines[0] and layer_lines[0].rstrip().endswith("156")
    assert model.num_parameters() == 61706
    assert model.output_shape((1, 28, 28)) == (10,)


def test_summary_prints_and_needs_input_shape(capsys):
    model = Sequential(Conv2d(3, 4, 3), ReLU())
    with pytest.raises(ValueError, match="input_shape"):
        model.summary()
    out = model.summary((3, 8, 8))
    printed = capsys.readouterr().out
    assert printed.strip() == out.strip()
    assert "(None, 4, 6, 6)" in printed and "112" in printed


def test_summary_nested_containers():
    model = Sequential(
        Conv2d(3, 8, 3, padding=1),
        Residual([Conv2d(8, 8, 3, padding=1), BatchNorm2d(8)]),
        Concat(Identity(), Conv2d(8, 4, 1)),
        GlobalAvgPool2d(), Linear(12, 5))
    text = model.summary((3, 16, 16), print_fn=None)
    assert "1 (Residual)" in text and "1.body.0 (Conv2d)" in text
    assert "(None, 12, 16, 16)" in text
    total = (3 * 9 + 1) * 8 + (8 * 9 + 1) * 8 + 2 * 8 + (8 + 1) * 4 + (12 + 1) * 5
    assert f"Total params: {total:,}" in text
    assert "Non-trainable buffers: 16" in text


def small_model(seed=0):
    return Sequential(
        Conv2d(2, 3, 3, padding=1), BatchNorm2d(3), ReLU(), MaxPool2d(2),
        Flatten(), Linear(3 * 2 * 2, 4)).initialize(seed)


def test_whole_model_gradient_softmax_ce(rng):
    model = small_model().astype(np.float64)
    x = rng.standard_normal((3, 2, 4, 4))
    labels = np.array([0, 3, 1])
    loss = SoftmaxCrossEntropy()

    def total_loss():
        return loss.forward(model.forward(x), labels)

    model.zero_grad()
    total_loss()
    gx = model.backward(loss.backward())
    check_gradient(lambda x_: loss.forward(model.forward(x_), labels), [x], 0, gx, 1.0,
                   name="model grad_x")
    for name, p in model.named_parameters():
        analytic, original = p.grad.copy(), p.data.copy()

        def fn(v, p=p):
            p.data[...] = v
            return total_loss()

        check_gradient(fn, [original], 0, analytic, 1.0, name=name)
        p.data[...] = original


def test_mse_loss_gradient_and_value(rng):
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss = MSE()
    value = loss.forward(pred, target)
    assert value == pytest.approx(((pred - target) ** 2).sum() / (2 * 4), rel=1e-12)
    check_gradient(lambda p: loss.forward(p, target), [pred], 0, loss.backward(), 1.0)


def test_softmax_cross_entropy_one_hot_equals_labels(rng):
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, 1, 3, 2, 1])
    ce = SoftmaxCrossEntropy()
    a = ce.forward(logits, labels)
    b = ce.forward(logits, np.eye(4, dtype=np.float32)[labels])
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(1, keepdims=True)
    assert a == pytest.approx(-np.log(p[np.arange(5), labels]).mean(), rel=1e-5)
    assert a == pytest.approx(b, rel=1e-6)
    assert ce.correct(logits, labels) == int((logits.argmax(1) == labels).sum())


def test_predict_uses_eval_mode_and_restores_mode(rng):
    model = Sequential(Flatten(), Dropout(0.5, seed=0), Linear(8, 2)).initialize(0)
    x = rng.standard_normal((10, 2, 4)).astype(np.float32)
    model.train()
    a = predict(model, x, batch_size=3)
    b = model.predict(x, batch_size=10)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert model.training and model[1].training
    model.eval()
    np.testing.assert_allclose(model.forward(x), a, rtol=1e-6)


def test_train_eval_propagate_to_children():
    model = Sequential(Residual([BatchNorm2d(2), Dropout(0.1)]), ReLU())
    model.eval()
    assert all(not layer.training for _, layer in model.named_layers())
    model.train()
    assert all(layer.training for _, layer in model.named_layers())


def test_state_dict_round_trip_and_errors():
    a, b = small_model(1), small_model(2)
    a[1].running_mean[...] = 3.0
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)
    np.testing.assert_array_equal(b[1].running_mean, a[1].running_mean)
    names = set(a.state_dict())
    assert {"0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var",
            "5.weight"} <= names
    state = a.state_dict()
    state["0.weight"] = state["0.weight"][:1]
    with pytest.raises(ValueError, match="0.weight.*shape"):
        b.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({})


def test_parameters_listed_once_with_names():
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "5.weight", "5.bias"]
    assert len(model.parameters()) == 6
    assert all(p.grad.shape == p.data.shape for p in model.parameters())

"""Layers: backward against finite differences (float64), shapes, errors, repr, init."""

import numpy as np
import pytest

from _gradcheck import check_gradient
from cnncore import set_num_threads
from cnncore.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv1d, Conv2d, Dense,
                            Dropout, Flatten, GlobalAvgPool2d, Identity, LeakyReLU, Linear,
                            LocalResponseNorm, MaxPool2d, ReLU, Residual, Sequential, Sigmoid,
                            Softmax, Tanh, init)


@pytest.fixture(autouse=True)
def _one_thread():
    """The arrays here are tiny: extra threads only add synchronisation, which stalls badly
    on a busy machine (conftest restores the setting after each test)."""
    set_num_threads(1)


def gradcheck_layer(layer, x, rng, check_params=True, eps=1e-6, rtol=1e-6, atol=1e-7):
    """d sum(layer(x) * w) / d(x and every parameter) against central differences."""
    layer = layer.astype(np.float64) if layer.parameters() else layer
    x = np.asarray(x, dtype=np.float64)
    y = layer.forward(x)
    w = rng.standard_normal(y.shape)
    layer.zero_grad()
    y = layer.forward(x)
    gx = layer.backward(w)
    check_gradient(lambda x_: layer.forward(x_), [x], 0, gx, w, eps=eps, rtol=rtol, atol=atol,
                   name=f"{layer!r} grad_x")
    if check_params:
        for name, p in layer.named_parameters():
            analytic = p.grad.copy()
            original = p.data.copy()

            def fn(v, p=p):
                p.data[...] = v
                return layer.forward(x)

            check_gradient(fn, [original], 0, analytic, w, eps=eps, rtol=rtol, atol=atol,
                           name=f"{layer!r} grad {name}")
            p.data[...] = original
    return gx


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(stride=2, padding=1),
    dict(padding="same", dilation=2),
    dict(groups=2, bias=False),
])
def test_conv2d_gradients(rng, kwargs):
    layer = Conv2d(4, 4, 3, rng=0, **kwargs)
    gradcheck_layer(layer, rng.standard_normal((2, 4, 5, 5)), rng)


def test_conv2d_rectangular_kernel_gradients(rng):
    layer = Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), rng=1)
    gradcheck_layer(layer, rng.standard_normal((1, 2, 4, 7)), rng)


@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2, padding=2, dilation=2)])
def test_conv1d_gradients(rng, kwargs):
    layer = Conv1d(3, 4, 3, rng=0, **kwargs)
    gradcheck_layer(layer, rng.standard_normal((2, 3, 9)), rng)


@pytest.mark.parametrize("layer", [
    MaxPool2d(2), MaxPool2d(3, stride=2, padding=1), AvgPool2d(2),
    AvgPool2d(3, stride=1, padding=1), AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    GlobalAvgPool2d(),
], ids=repr)
def test_pooling_gradients(rng, layer):
    gradcheck_layer(layer, rng.standard_normal((2, 3, 6, 6)), rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_keeps_indices_not_the_input(rng, dtype):
    """Training mode: backward scatters through the indices saved by forward, so it neither
    keeps x alive nor reads it again; eval mode keeps x and finds the argmaxes again."""
    import gc
    import weakref
    from cnncore import functional as F
    layer = MaxPool2d(3, stride=2, padding=1)
    x = rng.integers(-2, 3, size=(2, 3, 7, 6)).astype(dtype)  # ties: first maximum wins
    gy = rng.standard_normal((2, 3, 4, 3)).astype(dtype)
    expected = F.max_pool2d_backward(gy, x, 3, 2, 1)
    x_train = x.copy()
    y = layer.forward(x_train)
    np.testing.assert_array_equal(y, F.max_pool2d(x, 3, 2, 1))
    alive = weakref.ref(x_train)
    x_train[...] = 0  # a backward that read x now would see one big tie
    del x_train
    gc.collect()
    assert alive() is None
    gx = layer.backward(gy)
    assert gx.dtype == dtype
    np.testing.assert_array_equal(gx, expected)
    np.testing.assert_array_equal(layer.backward(gy), expected)  # backward twice: same
    layer.eval()
    np.testing.assert_array_equal(layer.forward(x), y)
    np.testing.assert_array_equal(layer.backward(gy), expected)
    layer.train()
    layer.forward(x)
    np.testing.assert_array_equal(layer.backward(gy), expected)
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward"):
        MaxPool2d(2).backward(np.zeros((1, 1, 2, 2), dtype))


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(0.1), Sigmoid(), Tanh(), Softmax(),
                                   Flatten(), Identity()], ids=repr)
def test_activation_gradients(rng, layer):
    x = rng.standard_normal((3, 5))
    x[np.abs(x) < 1e-3] = 0.5  # stay away from the kink of ReLU
    gradcheck_layer(layer, x, rng)


def test_flatten_gradient_4d(rng):
    gradcheck_layer(Flatten(), rng.standard_normal((2, 3, 2, 2)), rng)


def test_linear_gradients(rng):
    gradcheck_layer(Linear(5, 4, rng=0), rng.standard_normal((3, 5)), rng)
    gradcheck_layer(Linear(5, 4, bias=False, rng=0), rng.standard_normal((3, 5)), rng)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_gradients(rng, training):
    layer = BatchNorm2d(3)
    layer.running_mean[...] = rng.standard_normal(3)
    layer.running_var[...] = rng.uniform(0.5, 2, 3)
    layer.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    layer.bias.data[...] = rng.standard_normal(3)
    layer.train(training)
    gradcheck_layer(layer, rng.standard_normal((3, 3, 2, 3)) * 2 + 1, rng)


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 5)])
def test_batchnorm1d_gradients(rng, shape):
    layer = BatchNorm1d(4)
    layer.weight.data[...] = rng.uniform(0.5, 1.5, 4)
    gradcheck_layer(layer, rng.standard_normal(shape), rng)


def test_lrn_gradients(rng):
    gradcheck_layer(LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0),
                    rng.standard_normal((2, 5, 3, 3)), rng)


def test_dropout_gradient_with_fixed_mask(rng):
    layer = Dropout(0.4, seed=3)
    x = rng.standard_normal((4, 6))
    state = layer.extra_state()

    def fwd(x_):
        layer.set_extra_state(state)  # the same mask every call
        return layer.forward(x_)

    y = fwd(x)
    w = rng.standard_normal(y.shape)
    gx = layer.backward(w)
    check_gradient(fwd, [x], 0, gx, w, name="dropout")
    assert 0 < np.count_nonzero(y == 0) < y.size


def test_container_gradients(rng):
    rng0 = np.random.default_rng(0)
    res = Residual([Conv2d(3, 3, 3, padding=1, rng=rng0), Tanh()])
    proj = Residual(Sequential(Conv2d(3, 4, 3, stride=2, padding=1, rng=rng0), Sigmoid()),
                    shortcut=Conv2d(3, 4, 1, stride=2, rng=rng0))
    dense = Concat(Identity(), Sequential(BatchNorm2d(3), ReLU(), Conv2d(3, 2, 3, padding=1,
                                                                         rng=rng0)))
    x = rng.standard_normal((2, 3, 4, 4))
    for layer in (res, proj, dense):
        gradcheck_layer(layer, x, rng)


# ----------------------------------------------------------------------------- behaviour

@pytest.mark.parametrize("first,in_ch", [
    pytest.param(lambda r: Conv2d(1, 4, 5, padding=2, rng=r), 1, id="conv2d"),
    pytest.param(lambda r: Conv2d(32, 32, 3, padding=1, rng=r), 32, id="conv2d-winograd"),
    pytest.param(lambda r: Conv2d(2, 4, 3, groups=2, rng=r), 2, id="conv2d-direct"),
    pytest.param(lambda r: Sequential(Conv2d(1, 4, 3, rng=r)), 1, id="nested"),
    pytest.param(lambda r: ReLU(), 1, id="no-params"),
])
def test_backward_params_gives_the_parameter_gradients_of_backward(first, in_ch, rng):
    """backward_params (what the Trainer calls) skips the input gradient, nothing else."""
    models = [Sequential(first(np.random.default_rng(0)), Tanh(), Flatten()).astype(np.float64)
              for _ in range(2)]
    x = rng.standard_normal((3, in_ch, 6, 7))
    g = rng.standard_normal(models[0].forward(x).shape)
    models[1].forward(x)
    assert models[0].backward(g).shape == x.shape
    assert models[1].backward_params(g) is None
    for (name, p0), (_, p1) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert p0.grad.any(), name
        np.testing.assert_array_equal(p0.grad, p1.grad, err_msg=name)


def test_parameter_gradients_accumulate_until_zero_grad(rng):
    layer = Linear(3, 2, rng=0).astype(np.float64)
    x, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    layer.forward(x)
    layer.backward(g)
    once = layer.weight.grad.copy()
    np.testing.assert_allclose(once, g.T @ x, rtol=1e-12)
    layer.forward(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-12)
    layer.zero_grad()
    assert not layer.weight.grad.any()


def test_dropout_modes_and_seed(rng):
    x = np.ones((50, 40), np.float32)
    a, b = Dropout(0.5, seed=1), Dropout(0.5, seed=1)
    ya, yb = a.forward(x), b.forward(x)
    np.testing.assert_array_equal(ya, yb)
    assert set(np.unique(ya)) == {0.0, 2.0}
    assert not np.array_equal(ya, a.forward(x))  # a new mask each call
    a.eval()
    assert a.forward(x) is x
    np.testing.assert_array_equal(a.backward(x), x)


def test_batchnorm_running_stats_and_eval(rng):
    layer = BatchNorm2d(2, momentum=0.5)
    x = (rng.standard_normal((8, 2, 3, 3)) * 3 + 2).astype(np.float32)
    layer.forward(x)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(layer.running_mean, 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.running_var, 0.5 + 0.5 * var, rtol=1e-5)
    layer.eval()
    y = layer.forward(x)
    expected = (x - layer.running_mean[None, :, None, None]) / np.sqrt(
        layer.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    before = layer.running_mean.copy()
    layer.forward(x)
    np.testing.assert_array_equal(layer.running_mean, before)  # eval does not update


def test_residual_identity_adds_input(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    conv = Conv2d(3, 3, 3, padding=1, rng=0)
    res = Residual(conv)
    np.testing.assert_allclose(res.forward(x), conv.forward(x) + x, rtol=1e-6)


def test_concat_channels(rng):
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    block = Concat(Identity(), Conv2d(3, 4, 3, padding=1, rng=0))
    y = block.forward(x)
    assert y.shape == (2, 7, 5, 5)
    np.testing.assert_array_equal(y[:, :3], x)
    assert block.output_shape((3, 5, 5)) == (7, 5, 5)


@pytest.mark.parametrize("layer, in_shape, out_shape", [
    (Conv2d(1, 6, 5, padding=2), (1, 28, 28), (6, 28, 28)),
    (Conv2d(6, 16, 5), (6, 14, 14), (16, 10, 10)),
    (Conv2d(3, 8, 3, stride=2, padding="same"), (3, 9, 9), (8, 5, 5)),
    (Conv2d(3, 8, 3, padding="full", dilation=2), (3, 5, 5), (8, 9, 9)),
    (Conv1d(2, 4, 5, stride=2), (2, 21), (4, 9)),
    (MaxPool2d(2), (6, 28, 28), (6, 14, 14)),
    (MaxPool2d(3, stride=2, padding=1), (4, 7, 7), (4, 4, 4)),
    (AvgPool2d((2, 3)), (4, 6, 9), (4, 3, 3)),
    (GlobalAvgPool2d(), (7, 3, 3), (7,)),
    (Flatten(), (16, 5, 5), (400,)),
    (Linear(400, 120), (400,), (120,)),
    (BatchNorm2d(5), (5, 2, 2), (5, 2, 2)),
    (BatchNorm1d(5), (5,), (5,)),
    (LocalResponseNorm(5), (8, 3, 3), (8, 3, 3)),
    (Dropout(0.5), (10,), (10,)),
    (ReLU(), (3, 4), (3, 4)),
], ids=lambda v: repr(v) if not isinstance(v, tuple) else str(v))
def test_output_shape_agrees_with_forward(layer, in_shape, out_shape):
    assert layer.output_shape(in_shape) == out_shape
    x = np.random.default_rng(0).standard_normal((2,) + in_shape).astype(np.float32)
    assert layer.forward(x).shape == (2,) + out_shape


def test_repr_like_pytorch():
    assert repr(Conv2d(1, 6, 5, padding=2)) == \
        "Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))"
    assert repr(Conv2d(6, 16, 5)) == "Conv2d(6, 16, kernel_size=(5, 5), stride=(1, 1))"
    assert repr(Conv2d(4, 8, 3, groups=2, bias=False, dilation=2)) == \
        "Conv2d(4, 8, kernel_size=(3, 3), stride=(1, 1), dilation=(2, 2), groups=2, bias=False)"
    assert repr(Linear(400, 120)) == "Linear(in_features=400, out_features=120, bias=True)"
    assert repr(MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(BatchNorm2d(6)) == "BatchNorm2d(6, eps=1e-05, momentum=0.1)"
    assert repr(LocalResponseNorm(5)) == "LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=1.0)"
    assert repr(Dropout(0.25)) == "Dropout(p=0.25)"
    assert repr(ReLU()) == "ReLU()"
    text = repr(Sequential(Conv2d(1, 2, 3), ReLU()))
    assert text == ("Sequential(\n  (0): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1))\n"
                    "  (1): ReLU()\n)")
    assert Dense is Linear


# ----------------------------------------------------------------------------- errors

def test_conv_shape_error_names_layer_and_shapes():
    conv = Conv2d(1, 6, 5, padding=2)
    with pytest.raises(ValueError) as e:
        conv.forward(np.zeros((64, 3, 28, 28), np.float32))
    msg = str(e.value)
    assert msg.startswith("Conv2d(1, 6, kernel_size=(5, 5)")
    assert "expected input with 1 channel (N, 1, H, W)" in msg
    assert "got (64, 3, 28, 28)" in msg
    with pytest.raises(ValueError, match=r"expected input with 1 channel .* got \(64, 28, 28\)"):
        conv.forward(np.zeros((64, 28, 28), np.float32))


def test_other_shape_errors():
    with pytest.raises(ValueError, match=r"Linear\(in_features=400.*expected input \(N, 400\), "
                                         r"got \(8, 16, 5, 5\).*Flatten"):
        Linear(400, 120).forward(np.zeros((8, 16, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d.*expected a 4-D input \(N, C, H, W\), "
                                         r"got \(8, 10\)"):
        MaxPool2d(2).forward(np.zeros((8, 10), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(6.*expected input \(N, 6, H, W\), "
                                         r"got \(2, 5, 3, 3\)"):
        BatchNorm2d(6).forward(np.zeros((2, 5, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d.*larger than the padded input"):
        Conv2d(1, 2, 5).output_shape((1, 3, 3))
    with pytest.raises(ValueError, match=r"Residual.*\(4, 2, 2\).*\(3, 4, 4\)"):
        Residual(Conv2d(3, 4, 3, stride=2, padding=1)).output_shape((3, 4, 4))
    with pytest.raises(ValueError, match=r"Residual"):
        Residual(Conv2d(3, 4, 1)).forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"Concat: branch outputs"):
        Concat(Identity(), MaxPool2d(2)).forward(np.zeros((1, 3, 4, 4), np.float32))


def test_dtype_errors_and_bad_arguments():
    conv = Conv2d(1, 2, 3)
    with pytest.raises(TypeError, match="expected a float32 input.*got float64"):
        conv.forward(np.zeros((1, 1, 5, 5)))
    with pytest.raises(TypeError, match="int32"):  # int32 -> float32 could lose digits
        conv.forward(np.zeros((1, 1, 5, 5), np.int32))
    with pytest.raises(TypeError, match="complex128"):
        conv.forward(np.zeros((1, 1, 5, 5), np.complex128))
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward"):
        Conv2d(1, 2, 3).backward(np.zeros((1, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="divisible by groups"):
        Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="unknown initialiser"):
        Linear(2, 3, weight_init="lecun")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Linear(2, 3, dtype=np.float16)
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.5)


@pytest.mark.parametrize("dtype", ["float16", "uint8", "int8", "bool", ">f4", "<f4"])
@pytest.mark.parametrize("make", [lambda: Conv2d(2, 3, 3, padding=1),
                                  lambda: Sequential(Flatten(), Linear(2 * 4 * 4, 3)),
                                  lambda: BatchNorm2d(2)],
                         ids=["Conv2d", "Linear", "BatchNorm2d"])
def test_inputs_numpy_casts_safely_are_converted(make, dtype, rng):
    """float16, bool, small integers and byte-swapped floats reach a float32 layer as NumPy
    would cast them (losslessly), with the result of the converted input and its gradient."""
    layer = make().initialize(0)
    x = (rng.standard_normal((2, 2, 4, 4)) * 3).astype(dtype)
    want = layer.forward(x.astype(np.float32))
    gy = rng.standard_normal(want.shape).astype(np.float32)
    gx_want = layer.backward(gy)
    y = layer.forward(x)
    assert y.dtype == np.float32 and y.dtype.isnative
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(layer.backward(gy), gx_want)
    if dtype in ("float16", "uint8"):  # and a float64 layer takes int32 (exact in float64)
        layer64 = make().initialize(0).astype(np.float64)
        xi = x.astype(np.int32)
        np.testing.assert_array_equal(layer64.forward(xi), layer64.forward(xi.astype(float)))


# ----------------------------------------------------------------------------- init

def test_same_seed_same_weights_different_seed_different():
    a, b, c = Conv2d(3, 8, 3, rng=5), Conv2d(3, 8, 3, rng=5), Conv2d(3, 8, 3, rng=6)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(a.weight.data, c.weight.data)
    assert not a.bias.data.any()
    m1 = Sequential(Conv2d(1, 4, 3), Linear(4, 2), Dropout(0.5)).initialize(11)
    m2 = Sequential(Conv2d(1, 4, 3), Linear(4, 2), Dropout(0.5)).initialize(11)
    for p, q in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    x = np.ones((20, 20), np.float32)
    np.testing.assert_array_equal(m1[2].forward(x), m2[2].forward(x))


@pytest.mark.parametrize("name, expected_var", [
    ("he_uniform", lambda fi, fo: 2.0 / fi), ("he_normal", lambda fi, fo: 2.0 / fi),
    ("glorot_uniform", lambda fi, fo: 2.0 / (fi + fo)),
    ("glorot_normal", lambda fi, fo: 2.0 / (fi + fo)),
])
def test_initialiser_variance(name, expected_var):
    shape = (64, 32, 3, 3)  # fan_in 288, fan_out 576
    w = init.get_initializer(name)(shape, np.random.default_rng(0), np.float64)
    assert w.shape == shape and w.dtype == np.float64
    assert abs(w.mean()) < 0.01
    assert w.var() == pytest.approx(expected_var(288, 576), rel=0.05)
    if "uniform" in name:
        assert np.abs(w).max() <= np.sqrt(3 * expected_var(288, 576))


def test_astype_float64_converts_parameters_and_buffers():
    m = Sequential(Conv2d(1, 2, 3), BatchNorm2d(2), Flatten(), Linear(8, 2)).initialize(0)
    w32 = m[0].weight.data.copy()
    m.astype(np.float64)
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in m.parameters())
    assert m[1].running_var.dtype == np.float64
    np.testing.assert_array_equal(m[0].weight.data, w32.astype(np.float64))
    y = m.forward(np.zeros((2, 1, 4, 4)))
    assert y.dtype == np.float64

"""relu / leaky_relu / sigmoid / tanh and their backward kernels."""

import numpy as np
import pytest

from cnncore import functional as F
from cnncore import reference as R

from _gradcheck import as_float64, assert_close, check_gradient

DTYPES = [np.float32, np.float64]
SHAPES = [(1,), (7,), (3, 4), (2, 3, 4, 5), (5, 1, 1), (13, 3, 8, 8), (2, 1, 3, 1, 2), (1000,)]
EXTREMES = np.array([-1e4, -1000.0, -100.0, -89.0, -50.0, -20.0, -1.0, -1e-8, 0.0, 1e-8, 1.0,
                     20.0, 50.0, 89.0, 100.0, 1000.0, 1e4])

# name -> (kernel kwargs, independent float64 formula of the forward, of the derivative)
ACTIVATIONS = {
    "relu": ({}, lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
    "leaky_relu": ({}, lambda x: np.where(x > 0, x, 0.01 * x),
                   lambda x: np.where(x > 0, 1.0, 0.01)),
    "sigmoid": ({}, lambda x: 0.5 * (1 + np.tanh(x / 2)),
                lambda x: 0.25 * (1 - np.tanh(x / 2) ** 2)),
    "tanh": ({}, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
}
SLOPES = [0.0, 0.01, 0.2, 1.0]


def call(name, x, **kw):
    return getattr(F, name)(x, **kw)


def call_backward(name, gy, x, **kw):
    return getattr(F, name + "_backward")(gy, x, **kw)


def inputs(shape, dtype, g):
    x = 3 * g.standard_normal(shape)
    flat = x.reshape(-1)
    m = min(flat.size, EXTREMES.size)
    flat[:m] = EXTREMES[:m]  # always include some large and small values
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_forward(name, shape, dtype, rng):
    x = inputs(shape, dtype, rng)
    x_before = x.copy()
    y = call(name, x)
    assert y.shape == x.shape
    assert np.all(np.isfinite(y)), f"{name} produced non-finite values"
    ref = getattr(R, name)(*as_float64(x))
    assert_close(y, ref, dtype, f"{name} vs reference")
    assert_close(y, ACTIVATIONS[name][1](x.astype(np.float64)), dtype, f"{name} vs formula")
    np.testing.assert_array_equal(x, x_before)  # input untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward(name, shape, dtype, rng):
    x = inputs(shape, dtype, rng)
    gy = rng.standard_normal(shape).astype(dtype)
    gx = call_backward(name, gy, x)
    assert np.all(np.isfinite(gx)), f"{name}_backward produced non-finite values"
    ref = getattr(R, name + "_backward")(*as_float64(gy, x))
    assert_close(gx, ref, dtype, f"{name}_backward vs reference")
    formula = gy.astype(np.float64) * ACTIVATIONS[name][2](x.astype(np.float64))
    assert_close(gx, formula, dtype, f"{name}_backward vs formula")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", SLOPES)
def test_leaky_relu_slopes(slope, dtype, rng):
    x = inputs((4, 5, 6), dtype, rng)
    gy = rng.standard_normal(x.shape).astype(dtype)
    x64 = x.astype(np.float64)
    y = F.leaky_relu(x, negative_slope=slope)
    assert_close(y, np.where(x64 > 0, x64, slope * x64), dtype, "leaky_relu")
    gx = F.leaky_relu_backward(gy, x, negative_slope=slope)
    assert_close(gx, np.where(x64 > 0, 1.0, slope) * gy, dtype, "leaky_relu_backward")
    assert_close(gx, R.leaky_relu_backward(*as_float64(gy, x), negative_slope=slope), dtype,
                 "vs reference")


def test_leaky_relu_default_slope_is_001():
    x = np.array([-2.0, -1.0, 3.0])
    np.testing.assert_allclose(F.leaky_relu(x), [-0.02, -0.01, 3.0], rtol=1e-12)
    np.testing.assert_allclose(F.leaky_relu_backward(np.ones(3), x), [0.01, 0.01, 1.0],
                               rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_infinities_follow_numpy(dtype):
    """relu(-inf) is 0, but leaky_relu(-inf, 0) is -inf * 0 = NaN in NumPy and PyTorch: a
    slope of 0 must not switch to relu's kernel (it did)."""
    x = np.array([-np.inf, -1.0, 0.0, 2.0, np.inf], dtype=dtype)
    gy = np.array([np.inf, 1.0, 1.0, -np.inf, 1.0], dtype=dtype)
    with np.errstate(invalid="ignore"):
        for slope in (0.0, 0.01):
            np.testing.assert_array_equal(F.leaky_relu(x, slope), np.where(x > 0, x, x * slope))
            np.testing.assert_array_equal(F.leaky_relu_backward(gy, x, slope),
                                          np.where(x > 0, gy, gy * slope))
    np.testing.assert_array_equal(F.relu(x), [0, 0, 0, 2, np.inf])
    np.testing.assert_array_equal(F.relu_backward(gy, x), [0, 0, 0, -np.inf, 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_do_not_overflow(dtype):
    x = np.array([-1e4, -1000, -100, 100, 1000, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):  # no overflow / nan on the way
        s = F.sigmoid(x)
        ds = F.sigmoid_backward(np.ones_like(x), x)
        t = F.tanh(x)
        dt = F.tanh_backward(np.ones_like(x), x)
    for arr in (s, ds, t, dt):
        assert arr.dtype == dtype
        assert np.all(np.isfinite(arr))
    np.testing.assert_allclose(s, [0, 0, 0, 1, 1, 1], atol=1e-30)
    assert np.all(s >= 0) and np.all(s <= 1)
    np.testing.assert_allclose(ds, 0, atol=1e-30)
    np.testing.assert_array_equal(t, [-1, -1, -1, 1, 1, 1])
    np.testing.assert_allclose(dt, 0, atol=1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_special_values(dtype):
    x = np.array([0.0, -0.0, 1.0, -1.0], dtype=dtype)
    np.testing.assert_array_equal(F.relu(x), [0, 0, 1, 0])
    np.testing.assert_array_equal(F.relu_backward(np.full(4, 3, dtype=dtype), x), [0, 0, 3, 0])
    assert F.sigmoid(x)[0] == 0.5
    np.testing.assert_allclose(F.sigmoid(x)[2:], [1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0))],
                               rtol=1e-6)
    assert F.sigmoid_backward(np.ones(4, dtype=dtype), x)[0] == 0.25
    assert F.tanh(x)[0] == 0
    assert F.tanh_backward(np.ones(4, dtype=dtype), x)[0] == 1


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2)], ids=str)
def test_activation_scalar_and_empty_shapes(name, shape):
    """'Any shape' includes 0-d and empty arrays."""
    x = np.full(shape, -0.5) if shape == () else np.zeros(shape)
    y = call(name, x)
    assert y.shape == x.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, ACTIVATIONS[name][1](x), rtol=1e-12)
    gx = call_backward(name, np.ones(shape), x)
    assert gx.shape == x.shape
    np.testing.assert_allclose(gx, ACTIVATIONS[name][2](x), rtol=1e-12)


# ----------------------------------------------------------------------------- gradient checks

def away_from_zero(shape, g):
    """|x| > 1e-3: central differences are exact away from the kinks of relu."""
    x = g.standard_normal(shape)
    return np.sign(x) * (np.abs(x) + 2e-3)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradcheck(name, rng):
    x = away_from_zero((3, 4, 2), rng)
    g = rng.standard_normal(x.shape)
    gx = call_backward(name, g, x)
    check_gradient(lambda a: call(name, a), (x,), 0, gx, g, name=name)


@pytest.mark.parametrize("slope", [0.2, 0.0])
def test_leaky_relu_gradcheck(slope, rng):
    x = away_from_zero((5, 3), rng)
    g = rng.standard_normal(x.shape)
    gx = F.leaky_relu_backward(g, x, negative_slope=slope)
    check_gradient(lambda a: F.leaky_relu(a, negative_slope=slope), (x,), 0, gx, g)

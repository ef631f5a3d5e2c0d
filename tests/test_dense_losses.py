"""linear / linear_backward, softmax, softmax_cross_entropy and mse_loss."""

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.special import softmax as scipy_softmax

from cnncore import functional as F
from cnncore import reference as R

from _gradcheck import as_float64, assert_close, check_gradient

DTYPES = [np.float32, np.float64]


def assert_loss_scalar(loss, expected, dtype):
    """A NumPy scalar of the input dtype (or a Python float), close to ``expected``."""
    assert np.ndim(loss) == 0
    if isinstance(loss, np.generic):
        assert loss.dtype == np.dtype(dtype), f"loss has dtype {loss.dtype}, expected {dtype}"
    else:
        assert type(loss) is float, f"loss is a {type(loss)}"
    rel = 1e-5 if np.dtype(dtype) == np.float32 else 1e-10
    assert float(loss) == pytest.approx(float(expected), rel=rel, abs=rel)


# ----------------------------------------------------------------------------- linear

LINEAR_SHAPES = [(1, 1, 1), (5, 3, 4), (13, 17, 9), (2, 64, 10), (7, 1, 5), (1, 10, 1),
                 (32, 33, 31), (3, 200, 2),
                 # several GEMM blocks (64 rows / 64 forward columns / 128 dw outputs),
                 # the last one partial; LeNet's first dense layer
                 (130, 20, 150), (70, 9, 300), (64, 400, 120)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
def test_linear_forward(shape, bias, dtype, rng):
    n, fin, fout = shape
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    b = rng.standard_normal(fout).astype(dtype) if bias else None
    y = F.linear(x, w, b)
    x64, w64, b64 = as_float64(x, w, b)
    expected = x64 @ w64.T + (0 if b is None else b64)
    assert_close(y, expected, dtype, "linear")
    assert_close(y, R.linear(x64, w64, b64), dtype, "linear vs reference")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
def test_linear_backward(shape, dtype, rng):
    n, fin, fout = shape
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    gy = rng.standard_normal((n, fout)).astype(dtype)
    gx, gw, gb = F.linear_backward(gy, x, w)
    gy64, x64, w64 = as_float64(gy, x, w)
    assert_close(gx, gy64 @ w64, dtype, "grad_x")
    assert_close(gw, gy64.T @ x64, dtype, "grad_weight")
    assert_close(gb, gy64.sum(axis=0), dtype, "grad_bias")
    for got, ref in zip((gx, gw, gb), R.linear_backward(gy64, x64, w64)):
        assert_close(got, ref, dtype, "vs reference")


def test_linear_gradcheck(rng):
    x = rng.standard_normal((4, 5))
    w = rng.standard_normal((3, 5))
    b = rng.standard_normal(3)
    g = rng.standard_normal((4, 3))
    gx, gw, gb = F.linear_backward(g, x, w)
    check_gradient(F.linear, (x, w, b), 0, gx, g, name="grad_x")
    check_gradient(F.linear, (x, w, b), 1, gw, g, name="grad_weight")
    check_gradient(F.linear, (x, w, b), 2, gb, g, name="grad_bias")


# ----------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((4, 5), -1), ((4, 5), 1), ((4, 5), 0), ((1, 1), -1),
                                        ((7,), -1), ((7,), 0), ((2, 3, 4), -1), ((2, 3, 4), 1),
                                        ((2, 3, 4), 0), ((13, 100), -1)], ids=str)
def test_softmax(shape, axis, dtype, rng):
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    y = F.softmax(x, axis=axis)
    expected = scipy_softmax(x.astype(np.float64), axis=axis)
    assert_close(y, expected, dtype, "softmax")
    assert_close(y, R.softmax(*as_float64(x), axis=axis), dtype, "softmax vs reference")
    assert_close(y.sum(axis=axis), np.ones(np.delete(shape, axis % len(shape))), dtype, "sums")


def test_softmax_default_axis_is_last(rng):
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(F.softmax(x), scipy_softmax(x, axis=1), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_large_values(dtype):
    x = np.array([[1000, 1001, 1002],
                  [-1000, -1001, -1002],
                  [1e4, 0, -1e4],
                  [3000, 3000, 3000],
                  [0, 0, 0]], dtype=dtype)
    y = F.softmax(x)
    assert y.dtype == dtype
    assert np.all(np.isfinite(y))
    e = np.exp([0.0, 1.0, 2.0])
    expected = np.array([e / e.sum(), e[::-1] / e.sum(), [1, 0, 0], [1 / 3] * 3, [1 / 3] * 3])
    assert_close(y, expected, dtype, "softmax")


# ----------------------------------------------------------------------------- cross-entropy

def ce_expected(logits, t):
    z = logits.astype(np.float64)
    log_p = z - logsumexp(z, axis=1, keepdims=True)
    n = z.shape[0]
    return -(t * log_p).sum() / n, (np.exp(log_p) - t) / n


def one_hot(labels, k):
    t = np.zeros((len(labels), k))
    t[np.arange(len(labels)), labels] = 1
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.intp, np.uint8])
@pytest.mark.parametrize("nk", [(1, 2), (5, 3), (13, 10), (64, 7), (3, 1)], ids=str)
def test_softmax_cross_entropy_int_labels(nk, label_dtype, dtype, rng):
    n, k = nk
    logits = (2 * rng.standard_normal((n, k))).astype(dtype)
    labels = rng.integers(0, k, size=n).astype(label_dtype)
    loss, grad = F.softmax_cross_entropy(logits, labels)
    exp_loss, exp_grad = ce_expected(logits, one_hot(labels, k))
    assert_loss_scalar(loss, exp_loss, dtype)
    assert_close(grad, exp_grad, dtype, "grad_logits")
    ref_loss, ref_grad = R.softmax_cross_entropy(logits.astype(np.float64), labels)
    assert_loss_scalar(loss, ref_loss, dtype)
    assert_close(grad, ref_grad, dtype, "grad vs reference")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["one-hot", "probabilities"])
def test_softmax_cross_entropy_dense_targets(kind, dtype, rng):
    n, k = 6, 4
    logits = (2 * rng.standard_normal((n, k))).astype(dtype)
    if kind == "one-hot":
        t = one_hot(rng.integers(0, k, size=n), k)
    else:
        t = rng.random((n, k))
        t /= t.sum(axis=1, keepdims=True)
    t = t.astype(dtype)
    loss, grad = F.softmax_cross_entropy(logits, t)
    exp_loss, exp_grad = ce_expected(logits, t.astype(np.float64))
    assert_loss_scalar(loss, exp_loss, dtype)
    assert_close(grad, exp_grad, dtype, "grad_logits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_int_and_one_hot_agree(dtype, rng):
    logits = rng.standard_normal((8, 5)).astype(dtype)
    labels = rng.integers(0, 5, size=8)
    loss_i, grad_i = F.softmax_cross_entropy(logits, labels)
    loss_h, grad_h = F.softmax_cross_entropy(logits, one_hot(labels, 5).astype(dtype))
    assert float(loss_i) == pytest.approx(float(loss_h), rel=1e-6)
    np.testing.assert_allclose(grad_i, grad_h, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_large_logits(dtype):
    logits = np.array([[1000, 0, -1000], [0, 1000, 2000], [5e3, 5e3, 5e3]], dtype=dtype)
    labels = np.array([0, 1, 2])
    loss, grad = F.softmax_cross_entropy(logits, labels)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
    # per-row losses: 0, 1000, log 3
    assert float(loss) == pytest.approx((0 + 1000 + np.log(3)) / 3, rel=1e-5)
    expected_grad = np.array([[0, 0, 0], [0, -1, 1], [1 / 3, 1 / 3, -2 / 3]]) / 3
    assert_close(grad, expected_grad, dtype, "grad_logits")


def test_softmax_cross_entropy_known_value():
    # uniform logits over K classes: loss = log K, grad = (1/K - onehot) / N
    loss, grad = F.softmax_cross_entropy(np.zeros((2, 4)), np.array([1, 3]))
    assert float(loss) == pytest.approx(np.log(4), rel=1e-12)
    np.testing.assert_allclose(grad, [[0.125, -0.375, 0.125, 0.125],
                                      [0.125, 0.125, 0.125, -0.375]], rtol=1e-12)


@pytest.mark.parametrize("kind", ["int", "one-hot", "probabilities"])
def test_softmax_cross_entropy_gradcheck(kind, rng):
    n, k = 4, 5
    logits = rng.standard_normal((n, k))
    labels = rng.integers(0, k, size=n)
    if kind == "one-hot":
        labels = one_hot(labels, k)
    elif kind == "probabilities":
        labels = rng.random((n, k))
        labels /= labels.sum(axis=1, keepdims=True)
    scale = 1.7  # the checker weights the scalar loss by G
    _, grad = F.softmax_cross_entropy(logits, labels)

    def loss_only(z, t):
        return F.softmax_cross_entropy(z, t)[0]

    check_gradient(loss_only, (logits, labels), 0, scale * grad, scale)


# ----------------------------------------------------------------------------- mse

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (5, 3), (1, 1), (13, 10), (4, 2, 3, 3)], ids=str)
def test_mse_loss(shape, dtype, rng):
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss, grad = F.mse_loss(pred, target)
    diff = pred.astype(np.float64) - target.astype(np.float64)
    n = shape[0]
    assert_loss_scalar(loss, (diff ** 2).sum() / (2 * n), dtype)
    assert_close(grad, diff / n, dtype, "grad_pred")
    ref_loss, ref_grad = R.mse_loss(*as_float64(pred, target))
    assert_loss_scalar(loss, ref_loss, dtype)
    assert_close(grad, ref_grad, dtype, "grad vs reference")


def test_mse_loss_known_value():
    # the course's E = 1/(2N) sum (y - yhat)^2 with N = 2 samples
    loss, grad = F.mse_loss(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 2.0], [1.0, 7.0]]))
    assert float(loss) == pytest.approx((1 + 0 + 4 + 9) / 4, rel=1e-12)
    np.testing.assert_allclose(grad, [[0.5, 0.0], [1.0, -1.5]], rtol=1e-12)


def test_mse_loss_gradcheck(rng):
    pred = rng.standard_normal((3, 4))
    target = rng.standard_normal((3, 4))
    scale = -0.6
    _, grad = F.mse_loss(pred, target)
    check_gradient(lambda p, t: F.mse_loss(p, t)[0], (pred, target), 0, scale * grad, scale)

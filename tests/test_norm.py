"""The normalisation kernels (cnncore._norm_kernels) against their loop-based twins
(cnncore._norm_reference) and against finite differences."""

import numpy as np
import pytest

from _gradcheck import check_gradient
from cnncore import _norm_kernels as K
from cnncore import _norm_reference as R


def _bn_inputs(rng, shape, dtype):
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    return x, gamma, beta, rm, rv


TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 5), (3, 4, 9)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_reference(rng, dtype, shape, training):
    x, gamma, beta, rm, rv = _bn_inputs(rng, shape, dtype)
    rm_k, rv_k, rm_r, rv_r = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    y_k, xh_k, s_k = K.batch_norm(x, gamma, beta, rm_k, rv_k, training, 0.1, 1e-5)
    y_r, xh_r, s_r = R.batch_norm(x, gamma, beta, rm_r, rv_r, training, 0.1, 1e-5)
    for a, b in ((y_k, y_r), (xh_k, xh_r), (s_k, s_r), (rm_k, rm_r), (rv_k, rv_r)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **TOL[dtype])
    g = rng.standard_normal(shape).astype(dtype)
    out_k = K.batch_norm_backward(g, xh_k, s_k, gamma, training)
    out_r = R.batch_norm_backward(g, xh_r, s_r, gamma, training)
    for a, b in zip(out_k, out_r):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **TOL[dtype])


def test_batch_norm_statistics_from_definition(rng):
    x, gamma, beta, rm, rv = _bn_inputs(rng, (6, 2, 3, 3), np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    y, _, _ = K.batch_norm(x, gamma, beta, rm, rv, True, 0.2, 1e-3)
    for c in range(2):
        v = x[:, c].ravel()
        mu, var = v.mean(), v.var()
        expected = gamma[c] * (x[:, c] - mu) / np.sqrt(var + 1e-3) + beta[c]
        np.testing.assert_allclose(y[:, c], expected, rtol=1e-12, atol=1e-12)
        assert rm[c] == pytest.approx(0.8 * rm0[c] + 0.2 * mu, rel=1e-12)
        assert rv[c] == pytest.approx(0.8 * rv0[c] + 0.2 * v.var(ddof=1), rel=1e-12)
    # Per channel, the training output has mean beta and (almost) std gamma.
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), beta, atol=1e-10)


def test_batch_norm_needs_two_values_per_channel(rng):
    x = rng.standard_normal((1, 3)).astype(np.float32)
    z = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        K.batch_norm(x, z + 1, z, z.copy(), z + 1, True)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_numerically(rng, training):
    x, gamma, beta, rm, rv = _bn_inputs(rng, (3, 2, 3, 2), np.float64)
    w = rng.standard_normal(x.shape)

    def fwd(x_, gamma_=gamma, beta_=beta):
        return K.batch_norm(x_, gamma_, beta_, rm.copy(), rv.copy(), training)[0]

    _, xh, s = K.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training)
    gx, gg, gb = K.batch_norm_backward(w, xh, s, gamma, training)
    check_gradient(fwd, [x], 0, gx, w, rtol=1e-6, atol=1e-7, name="bn grad_x")
    check_gradient(lambda g_: fwd(x, g_), [gamma], 0, gg, w, name="bn grad_gamma")
    check_gradient(lambda b_: fwd(x, gamma, b_), [beta], 0, gb, w, name="bn grad_beta")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_lrn_matches_reference(rng, dtype, size):
    x = (rng.standard_normal((2, 7, 3, 4)) * 3).astype(dtype)
    args = (size, 1e-2, 0.75, 2.0)
    y_k = K.local_response_norm(x, *args)
    y_r = R.local_response_norm(x, *args)
    assert y_k.dtype == dtype
    np.testing.assert_allclose(y_k, y_r, **TOL[dtype])
    g = rng.standard_normal(x.shape).astype(dtype)
    gx_k = K.local_response_norm_backward(g, x, *args)
    gx_r = R.local_response_norm_backward(g, x, *args)
    assert gx_k.dtype == dtype
    np.testing.assert_allclose(gx_k, gx_r, **TOL[dtype])


def test_lrn_formula_by_hand():
    # One pixel, 3 channels, size 3: channel 0 sees channels -1..1 (-1 is a zero).
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    alpha, beta, k = 0.3, 0.5, 1.5
    y = K.local_response_norm(x, 3, alpha, beta, k).ravel()
    expected = [1 / (k + alpha / 3 * (1 + 4)) ** beta,
                2 / (k + alpha / 3 * (1 + 4 + 9)) ** beta,
                3 / (k + alpha / 3 * (4 + 9)) ** beta]
    np.testing.assert_allclose(y, expected, rtol=1e-14)
    # Even size 2 (PyTorch): channel c sees c-1 and c.
    y2 = K.local_response_norm(x, 2, alpha, beta, k).ravel()
    expected2 = [1 / (k + alpha / 2 * 1) ** beta, 2 / (k + alpha / 2 * 5) ** beta,
                 3 / (k + alpha / 2 * 13) ** beta]
    np.testing.assert_allclose(y2, expected2, rtol=1e-14)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_lrn_gradient_numerically(rng, size):
    x = rng.standard_normal((2, 5, 2, 3)) * 2
    w = rng.standard_normal(x.shape)
    args = (size, 0.5, 0.75, 1.0)
    gx = K.local_response_norm_backward(w, x, *args)
    check_gradient(lambda x_: K.local_response_norm(x_, *args), [x], 0, gx, w, name="lrn")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_matches_reference_and_statistics(dtype):
    x = np.random.default_rng(1).standard_normal((200, 50)).astype(dtype)
    y_k, m_k = K.dropout(x, 0.3, np.random.default_rng(7))
    y_r, m_r = R.dropout(x, 0.3, np.random.default_rng(7))
    np.testing.assert_allclose(y_k, y_r, **TOL[dtype])
    np.testing.assert_array_equal(m_k, m_r)
    assert y_k.dtype == dtype
    kept = m_k != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y_k[kept], x[kept] / 0.7, **TOL[dtype])
    assert np.all(y_k[~kept] == 0)
    g = np.ones_like(x)
    np.testing.assert_array_equal(K.dropout_backward(g, m_k), R.dropout_backward(g, m_r))


def test_dropout_identity_when_not_training(rng):
    x = rng.standard_normal((4, 3))
    y, mask = K.dropout(x, 0.5, rng, training=False)
    assert y is x and mask is None
    assert K.dropout_backward(x, None) is x
    with pytest.raises(ValueError, match="p must be in"):
        K.dropout(x, 1.0, rng)

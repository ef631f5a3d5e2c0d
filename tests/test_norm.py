"""The normalisation kernels (cnncore.functional.norm: compiled batch norm and add_relu;
cnncore._norm_kernels: compiled LRN, NumPy dropout) against their loop-based twins
(cnncore.reference / cnncore._norm_reference), PyTorch, and finite differences."""

import numpy as np
import pytest

from _gradcheck import check_gradient
from cnncore import _norm_kernels as K
from cnncore import _norm_reference as R
from cnncore import functional as F


def _bn_inputs(rng, shape, dtype):
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    return x, gamma, beta, rm, rv


TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}

BN_SHAPES = [
    (4, 3, 5, 6), (7, 5), (3, 4, 9),    # BatchNorm2d, BatchNorm1d (N, C) and (N, C, L)
    (1, 3, 4, 5),                       # N = 1 with spatial > 1
    (9, 6, 1, 1), (5, 1, 3, 3),         # 1x1 spatial; C = 1
    (2, 300, 3, 2), (2, 5, 3, 37),      # large C; rectangular with a tail of the 8 lanes
    (3, 2, 17), (33, 4),
]


def _bn_both(rng, shape, dtype, training, momentum=0.1, eps=1e-5):
    """Forward and backward of the compiled kernel and of the reference; asserts they agree."""
    x, gamma, beta, rm, rv = _bn_inputs(rng, shape, dtype)
    rm_k, rv_k, rm_r, rv_r = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    y_k, mu_k, s_k = F.batch_norm(x, gamma, beta, rm_k, rv_k, training, momentum, eps)
    y_r, mu_r, s_r = R.batch_norm(x, gamma, beta, rm_r, rv_r, training, momentum, eps)
    for name, a, b in (("y", y_k, y_r), ("mean", mu_k, mu_r), ("inv_std", s_k, s_r),
                       ("running_mean", rm_k, rm_r), ("running_var", rv_k, rv_r)):
        assert a.dtype == dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=name)
    g = rng.standard_normal(shape).astype(dtype)
    out_k = F.batch_norm_backward(g, x, mu_k, s_k, gamma, training)
    out_r = R.batch_norm_backward(g, x, mu_r, s_r, gamma, training)
    for name, a, b in zip(("grad_x", "grad_gamma", "grad_beta"), out_k, out_r):
        assert a.dtype == dtype and a.shape == b.shape, name
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=TOL[dtype]["rtol"],
                                   atol=TOL[dtype]["atol"] * scale, err_msg=name)
    return x, gamma, beta


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_reference(rng, dtype, shape, training):
    _bn_both(rng, shape, dtype, training)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_large_mean_small_spread(rng, dtype):
    # mean/std = 1e4: the shifted one-pass variance keeps its digits (E[x^2] - E[x]^2 would
    # lose eight of them)
    x = (1e4 + rng.standard_normal((8, 3, 6, 5))).astype(dtype)
    ones, zeros = np.ones(3, dtype), np.zeros(3, dtype)
    _, _, s = F.batch_norm(x, ones, zeros, None, None, True)
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    np.testing.assert_allclose(s, 1 / np.sqrt(var + 1e-5), rtol=1e-6 if dtype == np.float32
                               else 1e-12)


def test_batch_norm_statistics_from_definition(rng):
    x, gamma, beta, rm, rv = _bn_inputs(rng, (6, 2, 3, 3), np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, inv_std = F.batch_norm(x, gamma, beta, rm, rv, True, 0.2, 1e-3)
    for c in range(2):
        v = x[:, c].ravel()
        mu, var = v.mean(), v.var()
        expected = gamma[c] * (x[:, c] - mu) / np.sqrt(var + 1e-3) + beta[c]
        np.testing.assert_allclose(y[:, c], expected, rtol=1e-12, atol=1e-12)
        assert mean[c] == pytest.approx(mu, rel=1e-13)
        assert inv_std[c] == pytest.approx(1 / np.sqrt(var + 1e-3), rel=1e-13)
        assert rm[c] == pytest.approx(0.8 * rm0[c] + 0.2 * mu, rel=1e-12)
        assert rv[c] == pytest.approx(0.8 * rv0[c] + 0.2 * v.var(ddof=1), rel=1e-12)
    # Per channel, the training output has mean beta and (almost) std gamma.
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), beta, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_matches_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    x, gamma, beta, rm, rv = _bn_inputs(rng, (5, 4, 6, 7), dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    for training in (True, False):
        rm_k, rv_k, rm_t, rv_t = (torch.from_numpy(a.copy()) for a in (rm, rv, rm, rv))
        rm_k, rv_k = rm_k.numpy(), rv_k.numpy()
        y, mean, inv_std = F.batch_norm(x, gamma, beta, rm_k, rv_k, training, 0.3, 1e-4)
        gx, gg, gb = F.batch_norm_backward(g, x, mean, inv_std, gamma, training)
        xt = torch.tensor(x, requires_grad=True)
        gt = torch.tensor(gamma, requires_grad=True)
        bt = torch.tensor(beta, requires_grad=True)
        yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, gt, bt, training, 0.3, 1e-4)
        yt.backward(torch.from_numpy(g))
        tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
        for a, b in ((y, yt), (rm_k, rm_t), (rv_k, rv_t), (gx, xt.grad), (gg, gt.grad),
                     (gb, bt.grad)):
            np.testing.assert_allclose(a, b.detach().numpy(), **tol)


def test_batch_norm_needs_two_values_per_channel(rng):
    x = rng.standard_normal((1, 3)).astype(np.float32)
    z = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(x, z + 1, z, z.copy(), z + 1, True)
    # eval mode needs no batch statistics
    y, _, _ = F.batch_norm(x, z + 1, z, z.copy(), z + 1, False)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_batch_norm_bad_inputs(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    c3 = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"batch_norm: x must be \(N, C\)"):
        F.batch_norm(x[0, 0], c3, c3, c3.copy(), c3.copy())
    with pytest.raises(ValueError, match=r"batch_norm: gamma must have shape \(3,\)"):
        F.batch_norm(x, np.ones(4, np.float32), c3, c3.copy(), c3.copy())
    with pytest.raises(ValueError, match=r"batch_norm: running_var must have shape \(3,\)"):
        F.batch_norm(x, c3, c3, c3.copy(), np.ones(2, np.float32))
    with pytest.raises(TypeError, match="batch_norm: x has dtype float32 but gamma has dtype "
                                        "float64"):
        F.batch_norm(x, c3.astype(np.float64), c3, c3.copy(), c3.copy())
    # float16 (like ints and bool) is cast to the other arrays' float dtype, as NumPy would
    half = x.astype(np.float16)
    y16 = F.batch_norm(half, c3, c3, c3.copy(), c3.copy())[0]
    assert y16.dtype == np.float32
    np.testing.assert_array_equal(
        y16, F.batch_norm(half.astype(np.float32), c3, c3, c3.copy(), c3.copy())[0])
    with pytest.raises(TypeError, match="batch_norm"):
        F.batch_norm(x.astype(np.complex64), c3, c3, c3.copy(), c3.copy())
    with pytest.raises(TypeError, match="running_mean must be a numpy array"):
        F.batch_norm(x, c3, c3, [0.0, 0.0, 0.0], c3.copy())
    with pytest.raises(TypeError, match="running_mean is required in eval mode"):
        F.batch_norm(x, c3, c3, None, c3.copy(), training=False)
    ro = c3.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_var must be writeable"):
        F.batch_norm(x, c3, c3, c3.copy(), ro)
    with pytest.raises(ValueError, match="eps must be > 0"):
        F.batch_norm(x, c3, c3, c3.copy(), c3.copy(), eps=0)
    with pytest.raises(TypeError, match="training must be a bool"):
        F.batch_norm(x, c3, c3, c3.copy(), c3.copy(), training="yes")
    with pytest.raises(ValueError, match=r"batch_norm_backward: grad_out must have shape "
                                         r"\(2, 3, 4\), got \(2, 3, 5\)"):
        F.batch_norm_backward(np.ones((2, 3, 5), np.float32), x, c3, c3, c3)
    with pytest.raises(ValueError, match=r"batch_norm_backward: inv_std must have shape"):
        F.batch_norm_backward(x, x, c3, c3[:2], c3)
    with pytest.raises(TypeError, match="batch_norm_backward: mean is required"):
        F.batch_norm_backward(x, x, None, c3, c3)
    # without running statistics nothing is tracked; ints are cast
    y, _, _ = F.batch_norm(x, [1, 1, 1], [0, 0, 0], None, None)
    assert y.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_bit_identical_across_threads(rng, dtype, training):
    x, gamma, beta, rm, rv = _bn_inputs(rng, (5, 7, 9, 11), dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    outs = []
    for t in (1, 2, 3):
        rm_t, rv_t = rm.copy(), rv.copy()
        y, mean, inv_std = F.batch_norm(x, gamma, beta, rm_t, rv_t, training, n_threads=t)
        grads = F.batch_norm_backward(g, x, mean, inv_std, gamma, training, n_threads=t)
        outs.append((y, mean, inv_std, rm_t, rv_t) + grads)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 3, 2), (4, 3), (2, 2, 3)])
def test_batch_norm_gradients_numerically(rng, training, shape):
    x, gamma, beta, rm, rv = _bn_inputs(rng, shape, np.float64)
    w = rng.standard_normal(x.shape)

    def fwd(x_, gamma_=gamma, beta_=beta):
        return F.batch_norm(x_, gamma_, beta_, rm.copy(), rv.copy(), training)[0]

    _, mean, s = F.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training)
    gx, gg, gb = F.batch_norm_backward(w, x, mean, s, gamma, training)
    check_gradient(fwd, [x], 0, gx, w, rtol=1e-6, atol=1e-7, name="bn grad_x")
    check_gradient(lambda g_: fwd(x, g_), [gamma], 0, gg, w, name="bn grad_gamma")
    check_gradient(lambda b_: fwd(x, gamma, b_), [beta], 0, gb, w, name="bn grad_beta")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_relu(rng, dtype):
    a = rng.standard_normal((3, 4, 5, 7)).astype(dtype)
    b = rng.standard_normal(a.shape).astype(dtype)
    want = R.add_relu(a, b)
    np.testing.assert_array_equal(F.add_relu(a, b), want)
    for n in (1, 2, 3):
        out = a.copy()
        assert F.add_relu(out, b, out=out, n_threads=n) is out   # in place
        np.testing.assert_array_equal(out, want)
    nan = F.add_relu(np.array([np.nan, -1.0, 2.0], dtype), np.zeros(3, dtype))
    assert np.isnan(nan[0]) and nan[1] == 0 and nan[2] == 2
    with pytest.raises(ValueError, match=r"add_relu: b must have shape \(3, 4, 5, 7\)"):
        F.add_relu(a, b[:, :2])
    with pytest.raises(ValueError, match="add_relu: out must be a writeable"):
        F.add_relu(a, b, out=np.empty(a.shape, np.float16))


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, size, beta", [
    ((3, 9, 17, 19), 5, 0.75),     # pixels cross the kernel's 128-pixel blocks; beta 0.75
    ((2, 4, 300), 3, 0.6),         # 3-D input, pow() path, two and a half blocks
    ((1, 1, 1, 1), 5, 0.75),       # one channel, window wider than the channels
    ((2, 6, 2, 3, 4), 4, 1.3),     # 5-D input, even size
    ((4, 96, 5, 5), 5, 0.75),      # AlexNet-like channel count
])
def test_lrn_compiled_matches_reference_at_any_thread_count(rng, dtype, shape, size, beta):
    """The compiled kernel (tasks = sample x block of 128 pixels) against the float64
    reference, and the same bits at 1, 2 and 3 threads."""
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    args = (size, 1e-2, beta, 2.0)
    y1 = K.local_response_norm(x, *args, n_threads=1)
    gx1 = K.local_response_norm_backward(g, x, *args, n_threads=1)
    np.testing.assert_allclose(y1, R.local_response_norm(x.astype(float), *args),
                               **TOL[dtype])
    np.testing.assert_allclose(gx1, R.local_response_norm_backward(
        g.astype(float), x.astype(float), *args), **TOL[dtype])
    for n in (2, 3):
        np.testing.assert_array_equal(K.local_response_norm(x, *args, n_threads=n), y1)
        np.testing.assert_array_equal(
            K.local_response_norm_backward(g, x, *args, n_threads=n), gx1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, size, beta", [
    ((2, 9, 131), 5, 0.75),        # a 3-pixel tail after a full block: the vector tails
    ((1, 5, 7), 3, 0.6),           # fewer pixels than one vector; pow() path
    ((3, 2, 1), 5, 0.75),          # one pixel, window wider than the channels
])
def test_lrn_kernel_every_isa_level(rng, dtype, shape, size, beta):
    """The task kernel of every instruction-set level this machine runs (AVX-512, AVX2,
    baseline: chosen at run time) against the float64 reference."""
    from cnncore._kernels import lrn
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    alpha, k = 1e-2, 2.0
    y_r = R.local_response_norm(x.astype(float), size, alpha, beta, k)
    gx_r = R.local_response_norm_backward(g.astype(float), x.astype(float), size, alpha,
                                          beta, k)
    for isa in range(lrn.ISA + 1):
        y = np.full_like(x, np.nan)
        lrn.lrn_forward(x, y, size, alpha, beta, k, 2, isa)
        np.testing.assert_allclose(y, y_r, **TOL[dtype], err_msg=f"isa {isa}")
        gx = np.full_like(x, np.nan)
        work = np.zeros((2, 2 * shape[1] * lrn.block()))
        lrn.lrn_backward(g, x, gx, work, size, alpha, beta, k, 2, isa)
        np.testing.assert_allclose(gx, gx_r, **TOL[dtype], err_msg=f"isa {isa}")
    with pytest.raises(ValueError, match="lrn: isa must be -1 or in"):
        lrn.lrn_forward(x, y, size, alpha, beta, k, 1, lrn.ISA + 1)


def test_lrn_bad_arguments():
    x = np.ones((1, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="local_response_norm: size must be a positive int"):
        K.local_response_norm(x, 0)
    with pytest.raises(ValueError, match=r"local_response_norm: expected an input \(N, C, ...\)"):
        K.local_response_norm(np.ones((3, 2), np.float32), 3)
    with pytest.raises(TypeError, match="local_response_norm_backward: beta must be a number"):
        K.local_response_norm_backward(x, x, 3, beta="0.75")
    with pytest.raises(ValueError, match="local_response_norm_backward: grad_out has shape"):
        K.local_response_norm_backward(x[:, :2], x, 3)
    assert K.local_response_norm(np.ones((0, 3, 2, 2)), 3).shape == (0, 3, 2, 2)


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

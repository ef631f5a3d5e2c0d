"""The dense small-map path of convolutions (planner 'dense'): on maps so small that every
output reads the whole input (3x3 padding 1 on 2x2, a kernel the size of the input, ...),
the convolution is one GEMM with its matrix W' (kept by an eval-mode layer while the weight
does not change; built per call in training from batch 8), its input gradient one GEMM
with W'^T and its weight gradient dW' = dy^T x folded onto the taps."""

import numpy as np
import pytest

import cnncore
from cnncore import functional as F
from cnncore import reference as R
from cnncore.functional import planner
from cnncore.functional.conv import _conv_geometry
from cnncore.layers import Conv2d
from cnncore.optim import SGD

from _gradcheck import as_float64, assert_close, check_gradient

DTYPES = [np.float32, np.float64]


def _geo(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    return _conv_geometry("test", x_shape, w_shape, stride, padding, dilation, groups)


# (x shape, w shape, stride, padding, dilation, groups) -> dense with kept weights?
PLANNER_CASES = {
    "2x2-3x3-pad1": ((4, 8, 2, 2), (6, 8, 3, 3), 1, 1, 1, 1, True),
    "1x1-3x3-pad1": ((4, 8, 1, 1), (6, 8, 3, 3), 1, 1, 1, 1, True),
    "kernel-is-input": ((4, 8, 3, 3), (6, 8, 3, 3), 1, 0, 1, 1, True),
    "rect-1x2-3x3-pad1": ((2, 3, 1, 2), (5, 3, 3, 3), 1, 1, 1, 1, True),
    "rect-kernel-is-input": ((2, 3, 2, 3), (5, 3, 2, 3), 1, 0, 1, 1, True),
    "stride-gt-kernel-1x1": ((2, 3, 1, 1), (5, 3, 1, 1), 3, 0, 1, 1, True),
    "2x2-k2-stride2": ((2, 3, 2, 2), (5, 3, 2, 2), 2, 0, 1, 1, True),
    # some output misses an input pixel: no
    "2x3-3x3-pad1": ((4, 8, 2, 3), (6, 8, 3, 3), 1, 1, 1, 1, False),
    "3x3-stride2-pad1": ((4, 8, 3, 3), (6, 8, 3, 3), 2, 1, 1, 1, False),
    "3x3-dilation2-pad2": ((4, 8, 3, 3), (6, 8, 3, 3), 1, 2, 2, 1, False),
    "4x4-3x3-pad1": ((4, 8, 4, 4), (6, 8, 3, 3), 1, 1, 1, 1, False),
    "grouped": ((4, 8, 2, 2), (6, 4, 3, 3), 1, 1, 1, 2, False),
    # W' over _DENSE_MAX_BYTES (2048 * 4 x 2048 * 4 float32 = 256 MB): no
    "too-large": ((1, 2048, 2, 2), (2048, 2048, 3, 3), 1, 1, 1, 1, False),
}


@pytest.mark.parametrize("case", PLANNER_CASES.values(), ids=list(PLANNER_CASES))
def test_planner_dense_rule(case):
    x_shape, w_shape, stride, padding, dilation, groups, dense = case
    geo = _geo(x_shape, w_shape, stride, padding, dilation, groups)
    c_in, (c_out, _, kh, kw) = x_shape[1], w_shape
    kept = planner.conv_algorithm(geo, c_in, c_out, kh, kw, n=x_shape[0], kept=True)
    assert (kept == "dense") == dense
    # without kept weights (training, the functional API) and in the backward pass: only
    # from batch _DENSE_MIN_BATCH (the matrix is built on every call)
    for n in (1, planner._DENSE_MIN_BATCH - 1, planner._DENSE_MIN_BATCH, 64):
        for backward in (False, True):
            algo = planner.conv_algorithm(geo, c_in, c_out, kh, kw, backward=backward, n=n)
            assert (algo == "dense") == (dense and n >= planner._DENSE_MIN_BATCH)


def test_planner_dense_budget_counts_itemsize():
    # 512 -> 512 on 2x2: W' = 2048 x 2048 elements, 16 MB in float32, 32 MB in float64
    geo = _geo((1, 512, 2, 2), (512, 512, 3, 3), 1, 1)
    assert planner.use_dense(geo, 512, 512, 3, 3, itemsize=8)
    geo = _geo((1, 725, 2, 2), (725, 725, 3, 3), 1, 1)  # 2900^2 * 4 B > 32 MiB
    assert not planner.use_dense(geo, 725, 725, 3, 3, itemsize=4)


@pytest.fixture
def dense_calls(monkeypatch):
    """Record the dense GEMM calls and the W' builds."""
    calls = {"gemm": 0, "build": 0}
    conv = F.conv
    gemm, build = conv._dense.linear_forward_wide, conv._dense_weight

    def counted_gemm(*a):
        calls["gemm"] += 1
        return gemm(*a)

    def counted_build(*a, **k):
        calls["build"] += 1
        return build(*a, **k)

    monkeypatch.setattr(conv._dense, "linear_forward_wide", counted_gemm)
    monkeypatch.setattr(conv, "_dense_weight", counted_build)
    return calls


def _layer(x_shape, w_shape, stride, padding, dilation, dtype, rng, bias=True):
    c_out, _, kh, kw = w_shape
    layer = Conv2d(x_shape[1], c_out, (kh, kw), stride=stride, padding=padding,
                   dilation=dilation, bias=bias, dtype=dtype, rng=rng)
    layer.bias is not None and layer.bias.data.__setitem__(
        Ellipsis, rng.standard_normal(c_out).astype(dtype))
    return layer.eval()


DENSE_CASES = {k: v for k, v in PLANNER_CASES.items() if v[-1]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", DENSE_CASES.values(), ids=list(DENSE_CASES))
def test_dense_matches_reference(case, bias, dtype, rng, dense_calls):
    x_shape, w_shape, stride, padding, dilation, _, _ = case
    layer = _layer(x_shape, w_shape, stride, padding, dilation, dtype, rng, bias)
    x = rng.standard_normal(x_shape).astype(dtype)
    y = layer(x)
    assert dense_calls == {"gemm": 1, "build": 1}
    b = layer.bias.data if bias else None
    expected = R.conv2d(*as_float64(x, layer.weight.data), None if b is None else
                        b.astype(np.float64), stride=stride, padding=padding,
                        dilation=dilation)
    assert y.dtype == dtype and y.shape == expected.shape
    assert_close(y, expected, dtype, "dense conv")
    # the training-mode layer (no kept matrix, another algorithm) agrees too
    layer.train()
    assert_close(layer(x), expected, dtype, "train-mode conv")
    assert dense_calls["gemm"] == 1


def test_dense_bit_identical_at_any_thread_count(rng, dense_calls):
    layer = _layer((4, 512, 2, 2), (512, 512, 3, 3), 1, 1, 1, np.float32, rng)
    x = rng.standard_normal((4, 512, 2, 2)).astype(np.float32)
    before = cnncore.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            cnncore.set_num_threads(threads)
            outs.append(layer(x))
    finally:
        cnncore.set_num_threads(before)
    assert dense_calls == {"gemm": 3, "build": 1}  # one W', kept
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


def test_dense_matrix_follows_weight_changes(rng, dense_calls):
    layer = _layer((2, 16, 2, 2), (8, 16, 3, 3), 1, 1, 1, np.float32, rng)
    x = rng.standard_normal((2, 16, 2, 2)).astype(np.float32)
    first = layer(x)
    layer.weight.grad[...] = rng.standard_normal(layer.weight.shape)
    SGD(layer.parameters(), lr=0.1).step()
    after_step = layer(x)
    assert dense_calls["build"] == 2
    assert not np.allclose(after_step, first)
    fresh = F.conv2d(x, layer.weight.data, layer.bias.data, padding=1)
    assert_close(after_step, fresh, np.float32, "after step")
    layer.weight.data[...] = 0  # a write through a view, announced
    layer.weight.mark_changed()
    np.testing.assert_array_equal(layer(x), np.broadcast_to(
        layer.bias.data[None, :, None, None], first.shape))
    # a bias change needs no new matrix: the bias is read on every call
    layer.bias.data = layer.bias.data + 1
    assert_close(layer(x), np.broadcast_to(layer.bias.data[None, :, None, None], first.shape),
                 np.float32, "new bias")
    assert dense_calls["build"] == 3


def test_dense_non_finite_inputs_as_reference(rng):
    """Every entry of W' is a tap of the kernel (no structural zeros): an inf input gives
    the non-finite outputs the direct sum gives, no more."""
    layer = _layer((2, 3, 2, 2), (4, 3, 3, 3), 1, 1, 1, np.float64, rng)
    x = rng.standard_normal((2, 3, 2, 2))
    x[0, 1, 0, 1] = np.inf
    x[1, 2, 1, 1] = np.nan
    y = layer(x)
    expected = R.conv2d(x, layer.weight.data, layer.bias.data, padding=1)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-12, atol=1e-12)


def test_dense_empty_batch(rng):
    layer = _layer((1, 4, 2, 2), (3, 4, 3, 3), 1, 1, 1, np.float32, rng)
    y = layer(np.zeros((0, 4, 2, 2), np.float32))
    assert y.shape == (0, 3, 2, 2)


def test_linear_forward_wide_checks_its_scratch():
    from cnncore._kernels import dense
    x = np.ones((2, 3), np.float32)
    w = np.ones((5, 3), np.float32)
    y = np.empty((2, 5), np.float32)
    with pytest.raises(ValueError, match="yt must be"):
        dense.linear_forward_wide(x, w, np.empty(0, np.float32), y,
                                  np.empty((5, 3), np.float32), 1, 4)
    with pytest.raises(ValueError, match="col_block"):
        dense.linear_forward_wide(x, w, np.empty(0, np.float32), y,
                                  np.empty((5, 2), np.float32), 1, 0)


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DENSE_CASES.values(), ids=list(DENSE_CASES))
def test_dense_training_path_matches_reference(case, dtype, rng, monkeypatch):
    x_shape, w_shape, stride, padding, dilation, _, _ = case
    used = []
    for name in ("_dense_conv", "_dense_backward"):
        real = getattr(F.conv, name)
        monkeypatch.setattr(F.conv, name,
                            lambda *a, real=real, name=name: used.append(name) or real(*a))
    n = planner._DENSE_MIN_BATCH + 1
    x = rng.standard_normal((n, *x_shape[1:])).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    hp = dict(stride=stride, padding=padding, dilation=dilation)
    y = F.conv2d(x, w, b, **hp, n_threads=2)
    assert_close(y, R.conv2d(*as_float64(x, w, b), **hp), dtype, "forward")
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, **hp, n_threads=2)
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), **hp)
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")
    assert_close(gb, eb, dtype, "grad_bias")
    none, gw2, _ = F.conv2d_backward(gy, x, w, **hp, need_grad_x=False, n_threads=2)
    assert none is None
    np.testing.assert_array_equal(gw2, gw)
    assert used == ["_dense_conv", "_dense_backward", "_dense_backward"]


def test_dense_training_gradients_by_finite_differences(rng):
    n = planner._DENSE_MIN_BATCH
    x = rng.standard_normal((n, 3, 2, 2))
    w = rng.standard_normal((4, 3, 3, 3))
    fn = lambda x, w: F.conv2d(x, w, padding=1)  # noqa: E731
    g = rng.standard_normal((n, 4, 2, 2))
    gx, gw, _ = F.conv2d_backward(g, x, w, padding=1)
    check_gradient(fn, (x, w), 0, gx, g, name="grad_x")
    check_gradient(fn, (x, w), 1, gw, g, name="grad_weight")


def test_dense_training_bit_identical_at_any_thread_count(rng):
    x = rng.standard_normal((8, 256, 2, 2)).astype(np.float32)
    w = rng.standard_normal((256, 256, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((8, 256, 2, 2)).astype(np.float32)
    results = [(F.conv2d(x, w, padding=1, n_threads=t),
                *F.conv2d_backward(gy, x, w, padding=1, n_threads=t)) for t in (1, 2, 3)]
    for other in results[1:]:
        for got, first in zip(other, results[0]):
            np.testing.assert_array_equal(got, first)


def test_conv_matrix_layouts_and_tap_checks(rng):
    from cnncore._kernels import conv_dense
    geo = _geo((1, 3, 2, 2), (4, 3, 3, 3), 1, 1)
    w = rng.standard_normal((4, 3, 3, 3))
    m = F.conv._dense_weight(w, geo)
    assert m.shape == (4 * 2 * 2, 3 * 2 * 2)
    # row (o, a, b) = (1, 0, 1), column (c, i, j) = (2, 1, 0): input (1, 0) under output
    # (0, 1) with padding 1 is tap (1 - 0 + 1, 0 - 1 + 1) = (2, 0)
    assert m[(1 * 2 + 0) * 2 + 1, (2 * 2 + 1) * 2 + 0] == w[1, 2, 2, 0]
    bad = np.full((2, 2), 3, dtype=np.intc)
    good = np.zeros((2, 2), dtype=np.intc)
    with pytest.raises(ValueError, match="tap_h"):
        conv_dense.conv_matrix(w, np.empty_like(m), bad, good, 1)
    with pytest.raises(ValueError, match="out must be"):
        conv_dense.conv_matrix(w, np.empty((3, 3)), good, good, 1)

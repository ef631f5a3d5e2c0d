"""max_pool2d / avg_pool2d / global_avg_pool2d and their backward kernels."""

import numpy as np
import pytest

from cnncore import functional as F
from cnncore import reference as R

from _gradcheck import as_float64, assert_close, check_gradient

DTYPES = [np.float32, np.float64]


def _two(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _cfg(n, c, h, w, k, stride=None, padding=0):
    return dict(n=n, c=c, h=h, w=w, k=k, stride=stride, padding=padding)


def expected_pool_shape(cfg):
    (kh, kw), (ph, pw) = _two(cfg["k"]), _two(cfg["padding"])
    sh, sw = (kh, kw) if cfg["stride"] is None else _two(cfg["stride"])
    return (cfg["n"], cfg["c"], (cfg["h"] + 2 * ph - kh) // sh + 1,
            (cfg["w"] + 2 * pw - kw) // sw + 1)


def random_pool_configs(count, seed):
    g = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        kh, kw = (int(v) for v in g.integers(1, 5, size=2))
        k = kh if g.random() < 0.5 else (kh, kw)
        kh, kw = _two(k)
        r = g.random()
        stride = None if r < 0.3 else (int(g.integers(1, 4)) if r < 0.7
                                       else tuple(int(v) for v in g.integers(1, 4, size=2)))
        if g.random() < 0.5:
            padding = int(g.integers(0, min(kh, kw) // 2 + 1))
        else:
            padding = (int(g.integers(0, kh // 2 + 1)), int(g.integers(0, kw // 2 + 1)))
        ph, pw = _two(padding)
        h = max(1, kh - 2 * ph + int(g.integers(0, 7)))
        w = max(1, kw - 2 * pw + int(g.integers(0, 7)))
        out.append(_cfg(int(g.integers(1, 4)), int(g.integers(1, 4)), h, w, k, stride, padding))
    return out


EDGE_POOL = {
    "k2-default-stride": _cfg(2, 3, 6, 8, 2),
    "k2-odd-input": _cfg(2, 2, 7, 5, 2),
    "k3-s2-overlapping": _cfg(2, 2, 9, 8, 3, 2),
    "k3-s2-p1": _cfg(2, 2, 7, 8, 3, 2, 1),
    "k3-s1-p1": _cfg(1, 3, 6, 5, 3, 1, 1),
    "stride-larger-than-kernel": _cfg(2, 2, 11, 10, 2, 3),
    "stride-list": _cfg(1, 2, 7, 9, (3, 2), [2, 1], (1, 0)),
    "non-square": _cfg(2, 1, 6, 9, (2, 3), (1, 2), (1, 1)),
    "k1": _cfg(2, 2, 4, 3, 1),
    "k1-s2": _cfg(2, 2, 5, 6, 1, 2),
    "kernel-equals-input": _cfg(2, 3, 4, 5, (4, 5)),
    "kernel-equals-padded-input": _cfg(1, 2, 3, 2, (5, 4), 1, (2, 1)),
    "1x1-image": _cfg(2, 2, 1, 1, 1),
    "1x1-image-k3-p1": _cfg(1, 2, 1, 1, 3, 1, 1),
    "1x1-image-k2-p1": _cfg(1, 1, 1, 1, 2, 1, 1),
    "batch-13": _cfg(13, 3, 6, 6, 3, 2, 1),
    "k4-p2": _cfg(1, 2, 5, 5, 4, 1, 2),
}
POOL_PARAMS = [pytest.param(c, id=n) for n, c in EDGE_POOL.items()] + [
    pytest.param(c, id=f"random-{i}") for i, c in enumerate(random_pool_configs(25, 4242))]


def hyper(cfg):
    return dict(kernel_size=cfg["k"], stride=cfg["stride"], padding=cfg["padding"])


def tie_free(shape, dtype, g):
    """Distinct values (a permutation, half negative), exactly representable in float32."""
    size = int(np.prod(shape))
    return ((g.permutation(size) - size / 2) / 8).reshape(shape).astype(dtype)


# ----------------------------------------------------------------------------- max pool

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", POOL_PARAMS)
def test_max_pool2d_matches_reference(cfg, dtype, rng):
    x = tie_free((cfg["n"], cfg["c"], cfg["h"], cfg["w"]), dtype, rng)
    y = F.max_pool2d(x, **hyper(cfg))
    assert y.shape == expected_pool_shape(cfg)
    assert_close(y, R.max_pool2d(*as_float64(x), **hyper(cfg)), dtype, "max_pool2d")
    # a max is one of the inputs: exact
    assert np.isin(y, x).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", POOL_PARAMS)
def test_max_pool2d_backward_matches_reference(cfg, dtype, rng):
    x = tie_free((cfg["n"], cfg["c"], cfg["h"], cfg["w"]), dtype, rng)
    gy = rng.standard_normal(expected_pool_shape(cfg)).astype(dtype)
    gx = F.max_pool2d_backward(gy, x, **hyper(cfg))
    assert_close(gx, R.max_pool2d_backward(*as_float64(gy, x), **hyper(cfg)), dtype,
                 "max_pool2d_backward")
    # every output gradient lands somewhere: totals agree
    assert float(gx.astype(np.float64).sum()) == pytest.approx(
        float(gy.astype(np.float64).sum()), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_non_overlapping_is_reshape_max(dtype, rng):
    x = rng.standard_normal((2, 3, 6, 9)).astype(dtype)
    y = F.max_pool2d(x, (2, 3))
    expected = x.reshape(2, 3, 3, 2, 3, 3).max(axis=(3, 5))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_padding_never_wins(dtype):
    """Padded cells act as -inf: an all-negative input keeps negative maxima."""
    x = -np.arange(1, 17, dtype=dtype).reshape(1, 1, 4, 4)  # -1 ... -16
    y = F.max_pool2d(x, 3, stride=1, padding=1)
    expected = np.array([[-1, -1, -2, -3],
                         [-1, -1, -2, -3],
                         [-5, -5, -6, -7],
                         [-9, -9, -10, -11]], dtype=dtype)
    np.testing.assert_array_equal(y[0, 0], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_backward_ties_go_to_first(dtype):
    # one window, all equal: the gradient goes to the top-left element
    gx = F.max_pool2d_backward(np.array([[[[5.0]]]], dtype=dtype),
                               np.ones((1, 1, 2, 2), dtype=dtype), 2)
    np.testing.assert_array_equal(gx[0, 0], np.array([[5, 0], [0, 0]], dtype=dtype))
    # a tie that is not at the first position: first in row-major window order
    x = np.array([[1, 7, 3], [7, 2, 7], [0, 7, 1]], dtype=dtype).reshape(1, 1, 3, 3)
    gx = F.max_pool2d_backward(np.array([[[[2.0]]]], dtype=dtype), x, 3)
    np.testing.assert_array_equal(gx[0, 0], np.array([[0, 2, 0], [0, 0, 0], [0, 0, 0]],
                                                     dtype=dtype))
    # overlapping windows on a constant image (k2, s1): window (i, j) sends to (i, j)
    gy = np.array([[1, 2], [3, 4]], dtype=dtype).reshape(1, 1, 2, 2)
    gx = F.max_pool2d_backward(gy, np.zeros((1, 1, 3, 3), dtype=dtype), 2, stride=1)
    np.testing.assert_array_equal(gx[0, 0], np.array([[1, 2, 0], [3, 4, 0], [0, 0, 0]],
                                                     dtype=dtype))
    # with padding, every window's first *real* cell is (0, 0); overlapping windows sum
    gy = np.array([[1, 2], [4, 8]], dtype=dtype).reshape(1, 1, 2, 2)
    gx = F.max_pool2d_backward(gy, np.full((1, 1, 2, 2), -3, dtype=dtype), 3, stride=1,
                               padding=1)
    np.testing.assert_array_equal(gx[0, 0], np.array([[15, 0], [0, 0]], dtype=dtype))


def test_max_pool2d_backward_overlapping_windows_sum():
    x = np.array([[0, 1, 0, 2, 0],
                  [3, 9, 4, 0, 1],
                  [0, 5, 0, 6, 0],
                  [1, 0, 2, 0, 3],
                  [0, 4, 0, 5, 0]], dtype=np.float64).reshape(1, 1, 5, 5)
    gy = np.array([[1, 10], [100, 1000]], dtype=np.float64).reshape(1, 1, 2, 2)
    gx = F.max_pool2d_backward(gy, x, 3, stride=2)
    # windows: rows/cols 0-2 and 2-4; maxima 9 at (1,1), 6 at (2,3), 5 at (2,1), 6 at (2,3)
    expected = np.zeros((5, 5))
    expected[1, 1] = 1
    expected[2, 3] = 10 + 1000
    expected[2, 1] = 100
    np.testing.assert_array_equal(gx[0, 0], expected)


# ----------------------------------------------------------------------------- average pool

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("cfg", POOL_PARAMS)
def test_avg_pool2d_matches_reference(cfg, count_include_pad, dtype, rng):
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dtype)
    kw = dict(hyper(cfg), count_include_pad=count_include_pad)
    y = F.avg_pool2d(x, **kw)
    assert y.shape == expected_pool_shape(cfg)
    assert_close(y, R.avg_pool2d(*as_float64(x), **kw), dtype, "avg_pool2d")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("cfg", POOL_PARAMS)
def test_avg_pool2d_backward_matches_reference(cfg, count_include_pad, dtype, rng):
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dtype)
    kw = dict(hyper(cfg), count_include_pad=count_include_pad)
    gy = rng.standard_normal(expected_pool_shape(cfg)).astype(dtype)
    gx = F.avg_pool2d_backward(gy, x, **kw)
    assert_close(gx, R.avg_pool2d_backward(*as_float64(gy, x), **kw), dtype,
                 "avg_pool2d_backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_non_overlapping_is_reshape_mean(dtype, rng):
    x = rng.standard_normal((2, 3, 6, 9)).astype(dtype)
    expected = x.astype(np.float64).reshape(2, 3, 3, 2, 3, 3).mean(axis=(3, 5))
    assert_close(F.avg_pool2d(x, (2, 3)), expected, dtype, "avg")
    assert_close(F.avg_pool2d(x, (2, 3), count_include_pad=False), expected, dtype, "avg")


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_padding_divisor(dtype):
    x = np.ones((1, 1, 3, 3), dtype=dtype)
    with_pad = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
    without = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    # corner windows see 4 real cells, edges 6, the centre 9
    counts = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]], dtype=np.float64)
    assert_close(with_pad[0, 0], counts / 9, dtype, "count_include_pad=True")
    assert_close(without[0, 0], np.ones((3, 3)), dtype, "count_include_pad=False")
    gx = F.avg_pool2d_backward(np.ones((1, 1, 3, 3), dtype=dtype), x, 3, stride=1, padding=1,
                               count_include_pad=False)
    # cell (0,0) is in the windows centred at (0,0), (0,1), (1,0), (1,1)
    assert gx[0, 0, 0, 0] == pytest.approx(1 / 4 + 1 / 6 + 1 / 6 + 1 / 9, rel=1e-6)


# ----------------------------------------------------------------------------- global average pool

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5), (13, 2, 7, 3), (1, 8, 1, 9),
                                   (3, 1, 16, 16)])
def test_global_avg_pool2d(shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y = F.global_avg_pool2d(x)
    assert_close(y, x.astype(np.float64).mean(axis=(2, 3)), dtype, "global_avg_pool2d")
    gy = rng.standard_normal(shape[:2]).astype(dtype)
    gx = F.global_avg_pool2d_backward(gy, x)
    expected = np.broadcast_to(gy.astype(np.float64)[:, :, None, None] / (shape[2] * shape[3]),
                               shape)
    assert_close(gx, expected, dtype, "global_avg_pool2d_backward")
    assert_close(gx, R.global_avg_pool2d_backward(*as_float64(gy, x)), dtype, "vs reference")


# ----------------------------------------------------------------------------- gradient checks

GRADCHECK_POOL = {
    "k2": _cfg(1, 2, 4, 5, 2),
    "k3-s2-p1": _cfg(2, 1, 5, 6, 3, 2, 1),
    "k3-s1-p1": _cfg(1, 2, 4, 4, 3, 1, 1),
    "non-square": _cfg(1, 2, 5, 7, (2, 3), (1, 2), (1, 1)),
    "stride-larger-than-kernel": _cfg(1, 1, 7, 7, 2, 3),
}


@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in GRADCHECK_POOL.items()])
def test_max_pool2d_gradcheck(cfg, rng):
    # distinct values 0.125 apart: a 1e-6 nudge never changes an argmax
    x = tie_free((cfg["n"], cfg["c"], cfg["h"], cfg["w"]), np.float64, rng)
    g = rng.standard_normal(expected_pool_shape(cfg))
    gx = F.max_pool2d_backward(g, x, **hyper(cfg))
    check_gradient(lambda a: F.max_pool2d(a, **hyper(cfg)), (x,), 0, gx, g)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in GRADCHECK_POOL.items()])
def test_avg_pool2d_gradcheck(cfg, count_include_pad, rng):
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    kw = dict(hyper(cfg), count_include_pad=count_include_pad)
    g = rng.standard_normal(expected_pool_shape(cfg))
    gx = F.avg_pool2d_backward(g, x, **kw)
    check_gradient(lambda a: F.avg_pool2d(a, **kw), (x,), 0, gx, g)


def test_global_avg_pool2d_gradcheck(rng):
    x = rng.standard_normal((2, 3, 4, 3))
    g = rng.standard_normal((2, 3))
    gx = F.global_avg_pool2d_backward(g, x)
    check_gradient(F.global_avg_pool2d, (x,), 0, gx, g)

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


# ----------------------------------------------------------------------------- max pool, saved indices

def window_data(kind, shape, dtype, g):
    """Inputs for the argmax tests: distinct values, or many ties, -inf and NaN."""
    if kind == "distinct":
        return tie_free(shape, dtype, g)
    x = g.integers(-2, 3, size=shape).astype(dtype)  # five values: most windows tie
    if kind == "constant":
        x[...] = 1.5
    elif kind == "minus-inf":  # whole windows of -inf: the first real cell wins
        x[g.random(shape) < 0.7] = -np.inf
    elif kind == "nan":  # the first NaN of a window wins
        x[g.random(shape) < 0.2] = np.nan
    return x


DATA_KINDS = ["distinct", "integers", "constant", "minus-inf", "nan"]


def brute_argmax(x, cfg):
    """Flat argmax index of every window, one window at a time (numpy.argmax over the real
    cells in row-major order: the first maximum, or the first NaN)."""
    (kh, kw), (ph, pw) = _two(cfg["k"]), _two(cfg["padding"])
    sh, sw = (kh, kw) if cfg["stride"] is None else _two(cfg["stride"])
    n, c, h, w = x.shape
    out = np.empty(expected_pool_shape(cfg), dtype=np.int64)
    for b, ch, oh, ow in np.ndindex(*out.shape):
        cells = [(r, q) for r in range(oh * sh - ph, oh * sh - ph + kh)
                 for q in range(ow * sw - pw, ow * sw - pw + kw) if 0 <= r < h and 0 <= q < w]
        r, q = cells[int(np.argmax([x[b, ch, r, q] for r, q in cells]))]
        out[b, ch, oh, ow] = r * w + q
    return out


def gather(x, indices):
    """x[n, c].flat[indices[n, c]] for every plane."""
    n, c = x.shape[:2]
    return np.take_along_axis(x.reshape(n, c, -1), indices.reshape(n, c, -1),
                              axis=2).reshape(indices.shape)


def has_tied_window(x, indices, cfg):
    """True if some window has its maximum more than once (so tie-breaking is tested)."""
    (kh, kw), (ph, pw) = _two(cfg["k"]), _two(cfg["padding"])
    sh, sw = (kh, kw) if cfg["stride"] is None else _two(cfg["stride"])
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=np.nan)
    for b, ch, oh, ow in np.ndindex(*indices.shape):
        win = xp[b, ch, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw]
        m = gather(x, indices)[b, ch, oh, ow]
        if np.sum(win == m) > 1:
            return True
    return False


@pytest.mark.parametrize("kind", DATA_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", POOL_PARAMS)
def test_max_pool2d_indices_match_reference(cfg, dtype, kind, rng):
    x = window_data(kind, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]), dtype, rng)
    y, idx = F.max_pool2d(x, **hyper(cfg), return_indices=True)
    assert idx.dtype == np.int64 and idx.shape == y.shape == expected_pool_shape(cfg)
    y_ref, idx_ref = R.max_pool2d(x, **hyper(cfg), return_indices=True)
    np.testing.assert_array_equal(idx, idx_ref)
    # the values: as without indices, as the reference, and found at the indices
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, F.max_pool2d(x, **hyper(cfg)))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(y, gather(x, idx))


@pytest.mark.parametrize("kind", DATA_KINDS)
@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in EDGE_POOL.items()])
def test_max_pool2d_indices_brute_force(cfg, kind, rng):
    """Kernel and reference against a window-by-window numpy.argmax."""
    x = window_data(kind, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]), np.float32, rng)
    expected = brute_argmax(x, cfg)
    np.testing.assert_array_equal(F.max_pool2d(x, **hyper(cfg), return_indices=True)[1],
                                  expected)
    np.testing.assert_array_equal(R.max_pool2d(x, **hyper(cfg), return_indices=True)[1],
                                  expected)


def test_tie_data_has_ties(rng):
    """The tie cases above really contain windows with a repeated maximum."""
    cfg = EDGE_POOL["k3-s2-overlapping"]
    for kind in ("integers", "constant", "minus-inf"):
        x = window_data(kind, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]), np.float64, rng)
        assert has_tied_window(x, brute_argmax(x, cfg), cfg), kind
    x = window_data("nan", (2, 2, 9, 8), np.float64, rng)
    assert np.isnan(x).sum() > 1


@pytest.mark.parametrize("kind", DATA_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", POOL_PARAMS)
def test_max_pool2d_backward_indices(cfg, dtype, kind, rng):
    x = window_data(kind, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]), dtype, rng)
    gy = rng.standard_normal(expected_pool_shape(cfg)).astype(dtype)
    _, idx = F.max_pool2d(x, **hyper(cfg), return_indices=True)
    gx = F.max_pool2d_backward(gy, x, **hyper(cfg), indices=idx)
    assert gx.dtype == dtype and gx.shape == x.shape
    # the same bits as finding each argmax again from x
    np.testing.assert_array_equal(gx, F.max_pool2d_backward(gy, x, **hyper(cfg)))
    # the reference, with its own indices and without
    gy64, x64 = as_float64(gy, x)
    _, idx_ref = R.max_pool2d(x64, **hyper(cfg), return_indices=True)
    expected = R.max_pool2d_backward(gy64, x64, **hyper(cfg), indices=idx_ref)
    np.testing.assert_array_equal(expected, R.max_pool2d_backward(gy64, x64, **hyper(cfg)))
    assert_close(gx, expected, dtype, "max_pool2d_backward(indices=...)")


def test_max_pool2d_indices_match_torch(rng):
    """PyTorch's convention: flat h*W + w in the input plane, the first maximum on ties."""
    torch = pytest.importorskip("torch")
    for name in ("k2-odd-input", "k3-s2-p1", "stride-list", "non-square", "k4-p2",
                 "1x1-image-k3-p1"):
        cfg = EDGE_POOL[name]
        k, s, p = _two(cfg["k"]), cfg["stride"], _two(cfg["padding"])
        s = k if s is None else _two(s)
        for kind in ("distinct", "integers", "constant", "minus-inf"):
            x = window_data(kind, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]), np.float64, rng)
            _, expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p,
                                                         return_indices=True)
            _, idx = F.max_pool2d(x, **hyper(cfg), return_indices=True)
            np.testing.assert_array_equal(idx, expected.numpy(), err_msg=f"{name}, {kind}")


def _sequential_2x2(x):
    """2x2/2 max pool as the kernels scan the taps (0,0), (0,1), (1,0), (1,1): without
    indices a larger value or any NaN replaces the running max (so the first of equal values
    and the last NaN are kept, bit for bit: -0.0 vs 0.0, NaN payloads); with indices the
    first maximum and the first NaN (numpy.argmax)."""
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    taps = [x[:, :, i:2 * ho:2, j:2 * wo:2] for i in (0, 1) for j in (0, 1)]
    offsets = [0, 1, w, w + 1]
    m, arg_m, tap = taps[0].copy(), taps[0].copy(), np.zeros((n, c, ho, wo), dtype=np.int64)
    for k in (1, 2, 3):
        v = taps[k]
        m = np.where((v > m) | np.isnan(v), v, m)
        take = (v > arg_m) | (np.isnan(v) & ~np.isnan(arg_m))
        arg_m = np.where(take, v, arg_m)
        tap = np.where(take, offsets[k], tap)
    rows = 2 * np.arange(ho)[:, None] * w + 2 * np.arange(wo)[None, :]
    return m, arg_m, rows + tap


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("kind", ["integers", "signed-zeros", "nan-payloads", "distinct"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(2, 2), (3, 3), (2, 5), (5, 4), (10, 10), (11, 9), (28, 28),
                                (5, 601), (4, 512)])
def test_max_pool2d_2x2_fast_path(hw, dtype, kind, rng):
    """The 2x2 stride-2 unpadded path (whole planes per call; rows of 1, odd, and more than
    256 outputs; odd H/W floored) keeps the scan's exact bits, with and without indices."""
    shape = (2, 3, *hw)
    if kind == "distinct":
        x = tie_free(shape, dtype, rng)
    else:
        x = rng.integers(-1, 2, size=shape).astype(dtype)  # ties in most windows
    if kind == "signed-zeros":  # -0.0 == 0.0: which one is kept shows in the bits
        x[rng.random(shape) < 0.5] = -0.0
        x[x == 1] = 0.0
    elif kind == "nan-payloads":  # NaNs that differ in their bits
        uint = np.uint32 if dtype == np.float32 else np.uint64
        nan = np.full(shape, np.nan, dtype=dtype).view(uint) + rng.integers(
            1, 1000, size=shape).astype(uint)
        mask = rng.random(shape) < 0.3
        x[mask] = nan.view(dtype)[mask]
        assert len(np.unique(_bits(x[np.isnan(x)]))) > 1
    y_seq, y_arg, idx_seq = _sequential_2x2(x)
    y = F.max_pool2d(x, 2, 2)
    y2, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    np.testing.assert_array_equal(_bits(y), _bits(y_seq))
    np.testing.assert_array_equal(_bits(y2), _bits(y_arg))
    np.testing.assert_array_equal(idx, idx_seq)
    np.testing.assert_array_equal(idx, R.max_pool2d(x, 2, 2, return_indices=True)[1])
    if kind == "distinct":
        np.testing.assert_array_equal(y, R.max_pool2d(x, 2, 2))
    # and numpy.argmax window by window
    np.testing.assert_array_equal(idx, brute_argmax(x, _cfg(2, 3, *hw, 2)))
    for n_threads in (1, 2):
        y3, idx3 = F.max_pool2d(x, 2, 2, return_indices=True, n_threads=n_threads)
        np.testing.assert_array_equal(_bits(y3), _bits(y2))
        np.testing.assert_array_equal(idx3, idx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_backward_indices_overlapping_sum(dtype):
    # the example of test_max_pool2d_backward_overlapping_windows_sum, through the indices
    x = np.array([[0, 1, 0, 2, 0],
                  [3, 9, 4, 0, 1],
                  [0, 5, 0, 6, 0],
                  [1, 0, 2, 0, 3],
                  [0, 4, 0, 5, 0]], dtype=dtype).reshape(1, 1, 5, 5)
    y, idx = F.max_pool2d(x, 3, stride=2, return_indices=True)
    np.testing.assert_array_equal(idx[0, 0], [[1 * 5 + 1, 2 * 5 + 3], [2 * 5 + 1, 2 * 5 + 3]])
    gy = np.array([[1, 10], [100, 1000]], dtype=dtype).reshape(1, 1, 2, 2)
    gx = F.max_pool2d_backward(gy, x, 3, stride=2, indices=idx)
    expected = np.zeros((5, 5), dtype=dtype)
    expected[1, 1], expected[2, 3], expected[2, 1] = 1, 1010, 100
    np.testing.assert_array_equal(gx[0, 0], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_backward_indices_uses_only_shape_of_x(dtype, rng):
    x = tie_free((2, 3, 7, 6), dtype, rng)
    y, idx = F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    gy = rng.standard_normal(y.shape).astype(dtype)
    expected = F.max_pool2d_backward(gy, x, 3, 2, 1)
    # a zero-stride stand-in (never copied), and x overwritten after the forward
    like = np.broadcast_to(np.zeros((), dtype), x.shape)
    np.testing.assert_array_equal(F.max_pool2d_backward(gy, like, 3, 2, 1, indices=idx),
                                  expected)
    np.testing.assert_array_equal(
        F.max_pool2d_backward(gy, np.zeros_like(x), 3, 2, 1, indices=idx), expected)
    np.testing.assert_array_equal(
        R.max_pool2d_backward(gy, np.zeros_like(x), 3, 2, 1, indices=idx), expected)
    # other integer dtypes of the indices are cast
    np.testing.assert_array_equal(
        F.max_pool2d_backward(gy, x, 3, 2, 1, indices=idx.astype(np.uint16)), expected)
    # the dtype rules still apply to x
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(TypeError, match="max_pool2d_backward"):
        F.max_pool2d_backward(gy, x.astype(other), 3, 2, 1, indices=idx)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: grad_out must have shape"):
        F.max_pool2d_backward(gy, x[:, :, :5], 3, 2, 1, indices=idx)


def test_max_pool2d_indices_empty_batch():
    x = np.zeros((0, 2, 4, 4), np.float32)
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    assert y.shape == idx.shape == (0, 2, 2, 2) and idx.dtype == np.int64
    gx = F.max_pool2d_backward(y, x, 2, indices=idx)
    assert gx.shape == x.shape and gx.dtype == np.float32


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
def test_max_pool2d_backward_bad_indices(module, rng, monkeypatch):
    # tiny calls on three threads, so that a bad index in a later plane is another thread's
    monkeypatch.setattr(F._common, "_MIN_BYTES_PER_THREAD", 1)
    x = tie_free((2, 3, 6, 5), np.float32, rng)
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    gy = np.ones_like(y)
    call = lambda i: module.max_pool2d_backward(gy, x, 2, indices=i, n_threads=3)  # noqa: E731
    with pytest.raises(ValueError, match=r"max_pool2d_backward: indices must have shape"):
        call(idx[:, :, :, :1])
    with pytest.raises(ValueError, match=r"max_pool2d_backward: indices must have shape"):
        call(idx.reshape(2, 3, -1))
    for dtype in (np.float64, np.float32, bool):
        with pytest.raises(TypeError, match=r"max_pool2d_backward: indices must be .*integer"):
            call(idx.astype(dtype))
    for plane, value in [(0, -1), (5, 30), (5, 2 ** 40), (3, -2 ** 63)]:
        bad = idx.copy()
        bad.reshape(6, -1)[plane, -1] = value
        with pytest.raises(ValueError, match=r"max_pool2d_backward: indices must be in \[0, "):
            call(bad)
    huge = idx.astype(np.uint64)
    huge[1, 2, 0, 0] = 2 ** 63 + 5  # negative once cast to int64
    with pytest.raises(ValueError, match=r"indices must be in \[0, "):
        call(huge)
    # the largest valid index is fine
    ok = idx.copy()
    ok[1, 2, 0, 0] = 29
    assert call(ok)[1, 2, 5, 4] == 1


def test_max_pool2d_reference_has_the_same_signature():
    import inspect
    for name in ("max_pool2d", "max_pool2d_backward"):
        assert inspect.signature(getattr(F, name)) == inspect.signature(getattr(R, name))


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


def test_pool_geometry_cache_keeps_checks():
    """The parsed-geometry cache (one parse per distinct call) never caches a rejection,
    tells 2 from 2.0 and True, and passes unhashable arguments to the normal checks."""
    x = np.ones((1, 2, 6, 6), dtype=np.float32)
    assert F.max_pool2d(x, 2).shape == (1, 2, 3, 3)
    assert F.max_pool2d(x, [2, 2]).shape == F.max_pool2d(x, (2, 2)).shape == (1, 2, 3, 3)
    for _ in range(2):
        with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
            F.max_pool2d(x, 2.0)
        with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
            F.max_pool2d(x, True)
        with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
            F.max_pool2d(x, np.array([2, 2]))
        with pytest.raises(ValueError, match="at most half the kernel size"):
            F.max_pool2d(x, 2, padding=2)
        with pytest.raises(ValueError, match="grad_out must have shape"):
            F.max_pool2d_backward(np.ones((1, 2, 2, 2), np.float32), x, 2)

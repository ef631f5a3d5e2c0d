"""conv2d / conv1d and their backward kernels: compiled kernels against the NumPy reference,
against independent formulas, and against central differences."""

import numpy as np
import pytest
from scipy import signal

from cnncore import functional as F
from cnncore import reference as R

from _gradcheck import as_float64, assert_close, check_gradient

DTYPES = [np.float32, np.float64]


# ----------------------------------------------------------------------------- configurations

def _padding_amount(padding, k, d):
    """Independent restatement of the documented padding rule for one axis."""
    if padding == "valid":
        return 0
    if padding == "full":
        return d * (k - 1)
    if padding == "same":
        return d * (k - 1) // 2
    return padding


def _two(v):
    return (v, v) if isinstance(v, (int, str)) else tuple(v)


def expected_conv2d_shape(cfg):
    (kh, kw), (sh, sw), (dh, dw) = cfg["k"], _two(cfg["stride"]), _two(cfg["dilation"])
    pad = cfg["padding"]
    if isinstance(pad, str):
        ph, pw = _padding_amount(pad, kh, dh), _padding_amount(pad, kw, dw)
    else:
        ph, pw = _two(pad)
    ho = (cfg["h"] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (cfg["w"] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return (cfg["n"], cfg["c_out"], ho, wo)


def _hp(g, lo, hi):
    """A random hyper-parameter, sometimes as an int, sometimes a tuple or a list."""
    a, b = (int(v) for v in g.integers(lo, hi, size=2))
    form = g.integers(0, 3)
    if form == 0:
        return a, (a, a)
    if form == 1:
        return (a, b), (a, b)
    return [a, b], (a, b)


def random_conv2d_configs(count, seed):
    g = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        groups = int(g.choice([1, 1, 1, 2, 3]))
        c_in = groups * int(g.integers(1, 4))
        c_out = groups * int(g.integers(1, 4))
        kh, kw = (int(v) for v in g.integers(1, 5, size=2))
        stride, (sh, sw) = _hp(g, 1, 4)
        dilation, (dh, dw) = _hp(g, 1, 3) if g.random() < 0.4 else (1, (1, 1))
        mode = g.choice(["int", "pair", "same", "valid", "full"])
        if mode == "int":
            padding = int(g.integers(0, 3))
            ph = pw = padding
        elif mode == "pair":
            padding, (ph, pw) = _hp(g, 0, 3)
        else:
            padding = str(mode)
            ph, pw = (_padding_amount(padding, kh, dh), _padding_amount(padding, kw, dw))
            if padding == "same" and (dh * (kh - 1) % 2 or dw * (kw - 1) % 2):
                continue
        span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        h = max(1, span_h - 2 * ph + int(g.integers(0, 6)))
        w = max(1, span_w - 2 * pw + int(g.integers(0, 6)))
        configs.append(dict(n=int(g.integers(1, 4)), c_in=c_in, c_out=c_out, groups=groups,
                            h=h, w=w, k=(kh, kw), stride=stride, padding=padding,
                            dilation=dilation, bias=bool(g.random() < 0.7)))
    return configs


def _cfg(n, c_in, c_out, h, w, k, stride=1, padding=0, dilation=1, groups=1, bias=True):
    return dict(n=n, c_in=c_in, c_out=c_out, groups=groups, h=h, w=w, k=_two(k),
                stride=stride, padding=padding, dilation=dilation, bias=bias)


EDGE_CONV2D = {
    "1x1-image-1x1-kernel": _cfg(2, 3, 4, 1, 1, 1),
    "1x1-image-padding-1": _cfg(2, 2, 3, 1, 1, 3, padding=1),
    "1x1-image-k2-padding-1": _cfg(1, 2, 2, 1, 1, 2, padding=1),
    "1x1-image-full": _cfg(1, 1, 2, 1, 1, 3, padding="full"),
    "kernel-equals-input": _cfg(2, 3, 2, 4, 5, (4, 5)),
    "kernel-equals-padded-input": _cfg(2, 2, 3, 3, 4, (5, 6), padding=1),
    "kernel-equals-padded-input-dilated": _cfg(1, 2, 2, 3, 3, 3, padding=1, dilation=2),
    "stride-larger-than-kernel": _cfg(2, 2, 3, 10, 11, 2, stride=3),
    "stride-larger-than-input": _cfg(1, 2, 2, 4, 4, 2, stride=5),
    "batch-1-channel-1": _cfg(1, 1, 1, 6, 7, 3),
    "non-square-everything": _cfg(2, 2, 3, 9, 7, (2, 3), stride=(1, 2), padding=(0, 1),
                                  dilation=(2, 1)),
    "non-square-2": _cfg(3, 3, 2, 6, 11, (3, 1), stride=(2, 3), padding=(1, 0),
                         dilation=(1, 3)),
    "depthwise": _cfg(2, 4, 8, 7, 6, 3, padding=1, groups=4),
    "depthwise-strided-dilated": _cfg(2, 3, 6, 9, 9, 3, stride=2, dilation=2, groups=3),
    "groups-2": _cfg(2, 4, 6, 6, 5, (2, 3), groups=2),
    "groups-equal-c-out": _cfg(1, 6, 3, 5, 5, 3, groups=3, bias=False),
    "pointwise-1x1": _cfg(3, 5, 4, 6, 7, 1),
    "pointwise-1x1-strided": _cfg(2, 3, 2, 7, 6, 1, stride=2),
    "same-k3": _cfg(2, 3, 2, 6, 5, 3, padding="same"),
    "same-k5-dilated": _cfg(1, 2, 2, 7, 8, 5, padding="same", dilation=2),
    "same-even-k-dilation-2": _cfg(1, 2, 2, 6, 6, 2, padding="same", dilation=2),
    "full-k3": _cfg(2, 2, 3, 5, 4, 3, padding="full"),
    "full-strided": _cfg(1, 2, 2, 5, 6, (2, 3), padding="full", stride=2),
    "valid-k3": _cfg(2, 3, 2, 6, 5, 3, padding="valid"),
    "no-bias": _cfg(2, 3, 4, 5, 5, 3, bias=False),
    "batch-13": _cfg(13, 2, 3, 5, 5, 3, padding=1),
    "wide-channels": _cfg(2, 16, 8, 4, 4, 3, padding=1),
}

CONV2D_CONFIGS = list(EDGE_CONV2D.items()) + [
    (f"random-{i}", cfg) for i, cfg in enumerate(random_conv2d_configs(48, seed=20240611))]
CONV2D_PARAMS = [pytest.param(cfg, id=name) for name, cfg in CONV2D_CONFIGS]


def make_conv2d_inputs(cfg, dtype, g):
    x = g.standard_normal((cfg["n"], cfg["c_in"], cfg["h"], cfg["w"])).astype(dtype)
    w = g.standard_normal((cfg["c_out"], cfg["c_in"] // cfg["groups"]) + tuple(cfg["k"]))
    b = g.standard_normal(cfg["c_out"]).astype(dtype) if cfg["bias"] else None
    return x, w.astype(dtype), b


def hyper(cfg):
    return dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                groups=cfg["groups"])


# ----------------------------------------------------------------------------- conv2d vs reference

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONV2D_PARAMS)
def test_conv2d_forward_matches_reference(cfg, dtype, rng):
    x, w, b = make_conv2d_inputs(cfg, dtype, rng)
    y = F.conv2d(x, w, b, **hyper(cfg))
    assert y.shape == expected_conv2d_shape(cfg)
    expected = R.conv2d(*as_float64(x, w, b), **hyper(cfg))
    assert_close(y, expected, dtype, "conv2d")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONV2D_PARAMS)
def test_conv2d_backward_matches_reference(cfg, dtype, rng):
    x, w, _ = make_conv2d_inputs(cfg, dtype, rng)
    gy = rng.standard_normal(expected_conv2d_shape(cfg)).astype(dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, **hyper(cfg))
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")
    assert_close(gb, eb, dtype, "grad_bias")


# ----------------------------------------------------------------------------- weight-gradient layouts

# The im2col weight gradient reads its column matrix as (k_g x P) or, built transposed by
# _im2col_t, as (P x k_g); F.planner.transposed_dw_cols picks one from the shapes. These tests force
# each layout on every configuration above and on shapes that exercise _im2col_t's borders.
DW_LAYOUT_CONV2D = {
    "lenet-conv1": _cfg(3, 1, 6, 28, 28, 5, padding=2),
    "lenet-conv2": _cfg(3, 6, 16, 14, 14, 5),
    "borders-both-sides": _cfg(2, 3, 4, 5, 9, (2, 4), stride=(1, 2), padding=(1, 3),
                               dilation=(2, 1)),
    "kernel-wider-than-image": _cfg(1, 2, 3, 3, 3, 5, padding=2),  # no interior column
    "strided-dilated-padded": _cfg(2, 2, 2, 8, 10, 3, stride=3, padding=2, dilation=3),
    "groups-padded": _cfg(2, 4, 6, 6, 7, 3, padding=1, groups=2),
    "rectangular-kernel-1xk": _cfg(2, 5, 3, 4, 9, (1, 7), padding=(0, 3)),
}
DW_LAYOUT_PARAMS = CONV2D_PARAMS + [pytest.param(c, id=n) for n, c in DW_LAYOUT_CONV2D.items()]


@pytest.fixture(params=[False, True], ids=["cols-kxp", "cols-pxk"])
def forced_dw_layout(request, monkeypatch):
    """Force one column layout for the weight gradient; record the calls that asked."""
    calls = []

    def forced(k_g, p, pointwise):
        calls.append((k_g, p))
        return request.param

    monkeypatch.setattr(F.planner, "transposed_dw_cols", forced)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", DW_LAYOUT_PARAMS)
def test_conv2d_backward_both_dw_layouts_match_reference(cfg, dtype, rng, forced_dw_layout):
    x, w, _ = make_conv2d_inputs(cfg, dtype, rng)
    gy = rng.standard_normal(expected_conv2d_shape(cfg)).astype(dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, **hyper(cfg))
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")
    assert_close(gb, eb, dtype, "grad_bias")
    depthwise = w.shape[1] == 1 and cfg["groups"] > 1  # conv_direct: no column matrix
    assert len(forced_dw_layout) == (0 if depthwise else 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_every_short_row_length(dtype, rng, forced_dw_layout):
    """im2col copies rows of up to 128 bytes as fixed 16-byte blocks, by cases on the length:
    rows of 1 to 40 elements (image rows for _im2col, kernel rows for _im2col_t), padded
    and not."""
    for n_el in range(1, 41):
        for cfg in (_cfg(2, 2, 3, 3, n_el + 2, 3, padding=(0, 1)),   # rows of n_el outputs
                    _cfg(1, 2, 2, 2, n_el + 1, (1, n_el)),           # rows of n_el taps
                    _cfg(1, 1, 2, 3, n_el, (2, n_el), padding=(1, 2))):
            x, w, b = make_conv2d_inputs(cfg, dtype, rng)
            assert_close(F.conv2d(x, w, b, **hyper(cfg)),
                         R.conv2d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv2d")
            gy = rng.standard_normal(expected_conv2d_shape(cfg)).astype(dtype)
            got = F.conv2d_backward(gy, x, w, **hyper(cfg))
            for a, e, name in zip(got, R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg)),
                                  ["grad_x", "grad_weight", "grad_bias"]):
                assert_close(a, e, dtype, f"{name} ({n_el} elements)")


def test_transposed_dw_cols_rule():
    assert F.planner.transposed_dw_cols(150, 100, False)      # LeNet conv2: 6*5*5 x 10*10
    assert not F.planner.transposed_dw_cols(25, 784, False)   # LeNet conv1: 1*5*5 x 28*28
    assert not F.planner.transposed_dw_cols(16, 16, True)     # 1x1: x is the column matrix


# ----------------------------------------------------------------------------- conv2d vs formulas

@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_single_channel_is_scipy_correlate(dtype, rng):
    x = rng.standard_normal((1, 1, 9, 8)).astype(dtype)
    w = rng.standard_normal((1, 1, 3, 4)).astype(dtype)
    y = F.conv2d(x, w)
    expected = signal.correlate2d(x[0, 0].astype(np.float64), w[0, 0].astype(np.float64),
                                  mode="valid")
    assert_close(y[0, 0], expected, dtype, "valid")
    y_full = F.conv2d(x, w, padding="full")
    expected_full = signal.correlate2d(x[0, 0].astype(np.float64),
                                       w[0, 0].astype(np.float64), mode="full")
    assert_close(y_full[0, 0], expected_full, dtype, "full")


def test_conv2d_multichannel_strided_dilated_by_loops(rng):
    """A direct six-loop statement of the definition (independent of the reference)."""
    n, c, h, wd, c_out, groups = 2, 4, 8, 7, 6, 2
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (3, 2), (2, 1), (1, 2), (1, 2)
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((c_out, c // groups, kh, kw))
    b = rng.standard_normal(c_out)
    y = F.conv2d(x, w, b, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    expected = np.zeros((n, c_out, ho, wo))
    cg, og = c // groups, c_out // groups
    for nn in range(n):
        for o in range(c_out):
            gi = o // og
            for i in range(ho):
                for j in range(wo):
                    acc = b[o]
                    for ci in range(cg):
                        for a in range(kh):
                            for e in range(kw):
                                acc += (w[o, ci, a, e]
                                        * xp[nn, gi * cg + ci, i * sh + a * dh, j * sw + e * dw])
                    expected[nn, o, i, j] = acc
    assert_close(y, expected, np.float64, "conv2d")


@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_conv_is_channel_matmul(dtype, rng):
    x = rng.standard_normal((3, 5, 4, 6)).astype(dtype)
    w = rng.standard_normal((7, 5, 1, 1)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    y = F.conv2d(x, w, b)
    expected = (np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), x.astype(np.float64))
                + b.astype(np.float64)[None, :, None, None])
    assert_close(y, expected, dtype, "1x1 conv")


def test_conv2d_groups_equal_separate_convs(rng):
    """A grouped convolution is the concatenation of independent convolutions."""
    x = rng.standard_normal((2, 6, 7, 5))
    w = rng.standard_normal((9, 2, 3, 2))
    y = F.conv2d(x, w, stride=(1, 2), padding=1, groups=3)
    parts = [F.conv2d(x[:, 2 * i:2 * i + 2], w[3 * i:3 * i + 3], stride=(1, 2), padding=1)
             for i in range(3)]
    assert_close(y, np.concatenate(parts, axis=1), np.float64, "groups")


def test_conv2d_depthwise_is_per_channel(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((6, 1, 3, 3))
    y = F.conv2d(x, w, padding=1, groups=3)
    for o in range(6):
        c = o // 2
        expected = F.conv2d(x[:, c:c + 1], w[o:o + 1], padding=1)
        assert_close(y[:, o:o + 1], expected, np.float64, f"output channel {o}")


def test_conv2d_bias_is_added_per_channel(rng):
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    b = np.array([1.0, -2.0, 3.5, 100.0])
    diff = F.conv2d(x, w, b, padding=1) - F.conv2d(x, w, None, padding=1)
    np.testing.assert_allclose(diff, np.broadcast_to(b[None, :, None, None], diff.shape),
                               rtol=1e-12, atol=1e-12)


def test_conv2d_stride_subsamples_stride_one(rng):
    x = rng.standard_normal((2, 2, 11, 10))
    w = rng.standard_normal((3, 2, 3, 2))
    full = F.conv2d(x, w, padding=1)
    strided = F.conv2d(x, w, padding=1, stride=(2, 3))
    assert_close(strided, full[:, :, ::2, ::3], np.float64, "stride")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backward_grad_bias_is_sum(dtype, rng):
    x = rng.standard_normal((3, 2, 5, 5)).astype(dtype)
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    gy = rng.standard_normal((3, 4, 3, 3)).astype(dtype)
    _, _, gb = F.conv2d_backward(gy, x, w)
    assert_close(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), dtype, "grad_bias")


def test_conv2d_backward_is_adjoint_of_forward(rng):
    """<conv(x, w), g> = <x, grad_x> = <w, grad_w> (the operator is bilinear)."""
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    y = F.conv2d(x, w, **kw)
    g = rng.standard_normal(y.shape)
    gx, gw, _ = F.conv2d_backward(g, x, w, **kw)
    total = float(np.sum(y * g))
    assert total == pytest.approx(float(np.sum(x * gx)), rel=1e-10, abs=1e-10)
    assert total == pytest.approx(float(np.sum(w * gw)), rel=1e-10, abs=1e-10)


# ----------------------------------------------------------------------------- translation equivariance

def shift_zero_fill(a, dy, dx):
    """Shift the last two axes by (dy, dx), filling with zeros (np.roll without wrap-around)."""
    out = np.roll(a, (dy, dx), axis=(-2, -1))
    if dy > 0:
        out[..., :dy, :] = 0
    elif dy < 0:
        out[..., dy:, :] = 0
    if dx > 0:
        out[..., :, :dx] = 0
    elif dx < 0:
        out[..., :, dx:] = 0
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift", [(1, 2), (-2, 1), (3, -3), (0, 1)])
@pytest.mark.parametrize("padding,dilation", [("same", 1), ("valid", 1), ("same", 2), (2, 1)])
def test_conv2d_translation_equivariance(shift, padding, dilation, dtype, rng):
    x = np.zeros((2, 3, 16, 15), dtype=dtype)
    x[:, :, 6:10, 6:9] = rng.standard_normal((2, 3, 4, 3))  # well away from every border
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    y = F.conv2d(x, w, padding=padding, dilation=dilation)
    y_shifted = F.conv2d(shift_zero_fill(x, *shift), w, padding=padding, dilation=dilation)
    assert np.abs(y).max() > 0
    assert_close(y_shifted, shift_zero_fill(y.astype(np.float64), *shift), dtype, "shift")


def test_conv1d_translation_equivariance(rng):
    x = np.zeros((2, 3, 30))
    x[:, :, 12:17] = rng.standard_normal((2, 3, 5))
    w = rng.standard_normal((2, 3, 4))
    y = F.conv1d(x, w, padding="full")
    y_shifted = F.conv1d(np.roll(x, 5, axis=-1), w, padding="full")
    assert np.abs(y).max() > 0
    assert_close(y_shifted, np.roll(y, 5, axis=-1), np.float64, "shift")


# ----------------------------------------------------------------------------- conv1d

def _cfg1(n, c_in, c_out, length, k, stride=1, padding=0, dilation=1, groups=1, bias=True):
    return dict(n=n, c_in=c_in, c_out=c_out, length=length, k=k, stride=stride,
                padding=padding, dilation=dilation, groups=groups, bias=bias)


def random_conv1d_configs(count, seed):
    g = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        groups = int(g.choice([1, 1, 2, 3]))
        k, d, s = int(g.integers(1, 6)), int(g.choice([1, 1, 2, 3])), int(g.integers(1, 4))
        padding = g.choice(["0", "1", "2", "same", "valid", "full"])
        padding = int(padding) if padding.isdigit() else str(padding)
        if padding == "same" and d * (k - 1) % 2:
            continue
        p = _padding_amount(padding, k, d)
        length = max(1, d * (k - 1) + 1 - 2 * p + int(g.integers(0, 9)))
        configs.append(_cfg1(int(g.integers(1, 4)), groups * int(g.integers(1, 4)),
                             groups * int(g.integers(1, 4)), length, k, s, padding, d, groups,
                             bool(g.random() < 0.7)))
    return configs


EDGE_CONV1D = {
    "length-1-k1": _cfg1(2, 3, 2, 1, 1),
    "length-1-padding-1": _cfg1(1, 2, 2, 1, 3, padding=1),
    "kernel-equals-padded-input": _cfg1(2, 2, 3, 5, 7, padding=1),
    "stride-larger-than-kernel": _cfg1(2, 2, 2, 17, 2, stride=4),
    "depthwise": _cfg1(2, 4, 8, 12, 3, padding="same", groups=4),
    "same-dilated": _cfg1(1, 2, 3, 10, 3, padding="same", dilation=3),
    "full": _cfg1(2, 1, 1, 6, 4, padding="full"),
    "pointwise": _cfg1(3, 5, 4, 9, 1),
    "batch-13": _cfg1(13, 3, 2, 11, 3, stride=2, padding=1),
}
CONV1D_PARAMS = [pytest.param(c, id=n) for n, c in EDGE_CONV1D.items()] + [
    pytest.param(c, id=f"random-{i}") for i, c in enumerate(random_conv1d_configs(20, 777))]


def make_conv1d_inputs(cfg, dtype, g):
    x = g.standard_normal((cfg["n"], cfg["c_in"], cfg["length"])).astype(dtype)
    w = g.standard_normal((cfg["c_out"], cfg["c_in"] // cfg["groups"], cfg["k"])).astype(dtype)
    b = g.standard_normal(cfg["c_out"]).astype(dtype) if cfg["bias"] else None
    return x, w, b


def expected_conv1d_shape(cfg):
    p = _padding_amount(cfg["padding"], cfg["k"], cfg["dilation"])
    lo = (cfg["length"] + 2 * p - cfg["dilation"] * (cfg["k"] - 1) - 1) // cfg["stride"] + 1
    return (cfg["n"], cfg["c_out"], lo)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONV1D_PARAMS)
def test_conv1d_forward_matches_reference(cfg, dtype, rng):
    x, w, b = make_conv1d_inputs(cfg, dtype, rng)
    y = F.conv1d(x, w, b, **hyper(cfg))
    assert y.shape == expected_conv1d_shape(cfg)
    assert_close(y, R.conv1d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv1d")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONV1D_PARAMS)
def test_conv1d_backward_matches_reference(cfg, dtype, rng):
    x, w, _ = make_conv1d_inputs(cfg, dtype, rng)
    gy = rng.standard_normal(expected_conv1d_shape(cfg)).astype(dtype)
    got = F.conv1d_backward(gy, x, w, **hyper(cfg))
    expected = R.conv1d_backward(*as_float64(gy, x, w), **hyper(cfg))
    for name, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got, expected):
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_is_numpy_correlate(dtype, rng):
    x = rng.standard_normal((1, 1, 20)).astype(dtype)
    w = rng.standard_normal((1, 1, 5)).astype(dtype)
    for mode in ("valid", "same", "full"):
        y = F.conv1d(x, w, padding=mode)
        expected = np.correlate(x[0, 0].astype(np.float64), w[0, 0].astype(np.float64), mode)
        assert_close(y[0, 0], expected, dtype, mode)


@pytest.mark.parametrize("module", [F, R], ids=["functional", "reference"])
@pytest.mark.parametrize("cfg", [
    pytest.param(_cfg(2, 1, 6, 9, 8, 5, padding=2), id="im2col"),
    pytest.param(_cfg(2, 3, 6, 7, 6, 3, padding=1, groups=3), id="direct"),
    pytest.param(_cfg(2, 32, 32, 6, 5, 3, padding=1), id="winograd"),
])
def test_conv2d_backward_without_grad_x(cfg, module, rng):
    x, w, _ = make_conv2d_inputs(cfg, np.float64, rng)
    gy = rng.standard_normal(expected_conv2d_shape(cfg))
    gx, gw, gb = module.conv2d_backward(gy, x, w, **hyper(cfg))
    none, gw2, gb2 = module.conv2d_backward(gy, x, w, **hyper(cfg), need_grad_x=False)
    assert gx.shape == x.shape and none is None
    np.testing.assert_array_equal(gw2, gw)
    np.testing.assert_array_equal(gb2, gb)
    x1, w1, gy1 = x[:, :, 0, :].copy(), w[:, :, 0, :].copy(), gy[:, :, 0, :].copy()
    kw = dict(groups=cfg["groups"])
    none, gw1, _ = module.conv1d_backward(gy1[:, :, :x1.shape[2] - w1.shape[2] + 1], x1, w1,
                                          need_grad_x=False, **kw)
    assert none is None
    np.testing.assert_array_equal(
        gw1, module.conv1d_backward(gy1[:, :, :x1.shape[2] - w1.shape[2] + 1], x1, w1, **kw)[1])


# ----------------------------------------------------------------------------- depthwise planes

# Depthwise 3x3 convolutions of stride 1 or 2 (one input channel per group) run through the
# plane kernels of csrc/cnncore_direct.h (conv_direct.pyx, _is_dw3): padded plane copies
# (split into even and odd columns for stride 2), dx as the flipped kernel on dy padded by
# 2 - p (negative for p = 3) or, for stride 2, cnn_dw3_dx_s2; dw per plane, then over the
# batch. Stride (2, 1) and dilation keep conv_direct's general path. c_out = 2 * c_in:
# channel multiplier 2.
DEPTHWISE_CONV2D = {
    "1x1-image": _cfg(2, 3, 3, 1, 1, 3, padding=1),
    "1x1-image-padding-2": _cfg(1, 2, 4, 1, 1, 3, padding=2),
    "image-smaller-than-kernel": _cfg(2, 3, 6, 2, 2, 3, padding=1),
    "w1": _cfg(2, 2, 2, 5, 1, 3, padding=1),
    "w2-padding-2": _cfg(2, 2, 4, 3, 2, 3, padding=2, bias=False),
    "w3-valid": _cfg(3, 3, 3, 4, 3, 3),
    "w5": _cfg(2, 4, 4, 6, 5, 3, padding=1),
    "w17-valid": _cfg(2, 3, 6, 5, 17, 3),
    "w17-padding-2": _cfg(2, 3, 3, 3, 17, 3, padding=2),
    "rectangular-padding": _cfg(2, 3, 6, 4, 9, 3, padding=(0, 2)),
    "rectangular-padding-2-1": _cfg(2, 2, 2, 9, 5, 3, padding=(2, 1)),
    "padding-3": _cfg(2, 2, 4, 4, 6, 3, padding=3),  # dx padding 2 - 3 < 0
    "multiplier-2-28x28": _cfg(3, 4, 8, 28, 28, 3, padding=1),
    "multiplier-3": _cfg(2, 2, 6, 7, 6, 3, padding=1),
    "batch-13": _cfg(13, 5, 5, 6, 7, 3, padding=1),
    "stride-2": _cfg(2, 3, 6, 9, 8, 3, stride=2, padding=1),
    "stride-2-1x1-image": _cfg(2, 2, 2, 1, 1, 3, stride=2, padding=1),
    "stride-2-w1": _cfg(2, 2, 4, 6, 1, 3, stride=2, padding=1),
    "stride-2-w2-padding-2": _cfg(2, 2, 2, 5, 2, 3, stride=2, padding=2, bias=False),
    "stride-2-w3-valid": _cfg(2, 3, 3, 3, 3, 3, stride=2),
    "stride-2-w5": _cfg(2, 2, 4, 5, 5, 3, stride=2, padding=(0, 1)),
    "stride-2-w17": _cfg(2, 3, 3, 6, 17, 3, stride=2, padding=(1, 2)),
    "stride-2-padding-3": _cfg(2, 2, 2, 7, 6, 3, stride=2, padding=3),
    "stride-2-28x28": _cfg(2, 4, 8, 28, 28, 3, stride=2, padding=1),
    "stride-2-1-general": _cfg(2, 2, 2, 5, 5, 3, stride=(2, 1), padding=(0, 2)),
    "dilation-2-general": _cfg(2, 2, 4, 7, 6, 3, dilation=2, padding=2),
}
DEPTHWISE_PARAMS = [pytest.param(c, id=n) for n, c in DEPTHWISE_CONV2D.items()]


def _depthwise(cfg):
    return dict(cfg, groups=cfg["c_in"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", DEPTHWISE_PARAMS)
def test_depthwise_conv2d_matches_reference(cfg, dtype, rng):
    cfg = _depthwise(cfg)
    x, w, b = make_conv2d_inputs(cfg, dtype, rng)
    assert w.shape[1] == 1 and cfg["groups"] > 1  # conv_direct
    y = F.conv2d(x, w, b, **hyper(cfg))
    assert y.shape == expected_conv2d_shape(cfg)
    assert_close(y, R.conv2d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv2d")

    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, **hyper(cfg))
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")
    assert_close(gb, eb, dtype, "grad_bias")
    none, gw2, _ = F.conv2d_backward(gy, x, w, **hyper(cfg), need_grad_x=False)
    assert none is None
    np.testing.assert_array_equal(gw2, gw)


@pytest.mark.parametrize("name", ["1x1-image", "w2-padding-2", "rectangular-padding",
                                  "padding-3", "multiplier-3", "stride-2",
                                  "stride-2-w2-padding-2", "stride-2-w17",
                                  "stride-2-padding-3"])
def test_depthwise_conv2d_gradcheck(name, rng):
    _check_conv2d_gradients(_depthwise(DEPTHWISE_CONV2D[name]), rng)


def _check_conv2d_gradients(cfg, rng):
    """Finite-difference check of conv2d_backward's grad_x and grad_weight (float64)."""
    x, w, b = make_conv2d_inputs(dict(cfg, bias=True), np.float64, rng)
    kw = hyper(cfg)
    g = rng.standard_normal(expected_conv2d_shape(cfg))
    gx, gw, _ = F.conv2d_backward(g, x, w, **kw)

    def fn(x_, w_):
        return F.conv2d(x_, w_, b, **kw)

    check_gradient(fn, (x, w), 0, gx, g, name="grad_x")
    check_gradient(fn, (x, w), 1, gw, g, name="grad_weight")


# ----------------------------------------------------------------------------- Winograd path

# 3x3 stride-1 convolutions run through Winograd F(2x2, 3x3) (_kernels/winograd.pyx) once
# both channel counts reach F.planner._WINOGRAD_MIN_CHANNELS (_BACKWARD for the gradients); these
# tests lower the thresholds so that small, odd shapes take the path too.
WINOGRAD_CONV2D = {
    "1x1-image": _cfg(2, 3, 4, 1, 1, 3, padding=1),
    "odd-output": _cfg(3, 2, 3, 5, 7, 3, padding=1),  # partial last tile row and column
    "valid": _cfg(2, 3, 2, 6, 5, 3),
    "kernel-equals-input": _cfg(2, 2, 3, 3, 3, 3),
    "padding-2": _cfg(1, 2, 2, 4, 3, 3, padding=2),
    "rectangular-padding": _cfg(2, 3, 2, 6, 9, 3, padding=(0, 2)),
    "batch-13-no-bias": _cfg(13, 4, 5, 4, 6, 3, padding=1, bias=False),  # short last block
    "wide": _cfg(3, 24, 20, 10, 12, 3, padding=1),
}
WINOGRAD_PARAMS = [pytest.param(c, id=n) for n, c in WINOGRAD_CONV2D.items()]


def any_tile_count(monkeypatch):
    """Let Winograd run however few 2x2 output tiles the batch has."""
    for name in ("_WINOGRAD_MIN_BATCH_TILES", "_WINOGRAD_MIN_BATCH_TILES_KEPT",
                 "_WINOGRAD_MIN_BATCH_TILES_BACKWARD"):
        monkeypatch.setattr(F.planner, name, 0)


@pytest.fixture
def winograd_calls(monkeypatch):
    """Lower the channel threshold and count the calls that take the Winograd path."""
    calls = []
    original = F.conv._winograd_conv

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_CHANNELS_BACKWARD", 1)
    any_tile_count(monkeypatch)
    monkeypatch.setattr(F.conv, "_winograd_conv", spy)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", WINOGRAD_PARAMS)
def test_winograd_conv2d_matches_reference(cfg, dtype, rng, winograd_calls):
    x, w, b = make_conv2d_inputs(cfg, dtype, rng)
    y = F.conv2d(x, w, b, **hyper(cfg))
    assert winograd_calls == [w.shape]
    assert_close(y, R.conv2d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv2d")

    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, **hyper(cfg))
    assert len(winograd_calls) == 2  # the input gradient is a Winograd convolution too
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")
    assert_close(gb, eb, dtype, "grad_bias")


@pytest.mark.parametrize("name", ["odd-output", "padding-2", "batch-13-no-bias"])
def test_winograd_conv2d_gradcheck(name, rng, winograd_calls):
    _check_conv2d_gradients(WINOGRAD_CONV2D[name], rng)
    assert winograd_calls


@pytest.mark.parametrize("cfg,forward,backward", [
    (_cfg(2, 16, 16, 6, 6, 3, padding=1), True, False),
    (_cfg(2, 32, 32, 6, 6, 3, padding=1), True, True),
    (_cfg(2, 32, 31, 6, 6, 3, padding=1), True, False),     # too few output channels
    (_cfg(2, 15, 32, 6, 6, 3, padding=1), False, False),    # too few input channels
    (_cfg(2, 32, 32, 6, 6, 3, stride=2), False, False),
    (_cfg(2, 32, 32, 6, 6, 3, dilation=2), False, False),
    (_cfg(2, 32, 32, 6, 6, 3, groups=2), False, False),
    (_cfg(2, 32, 32, 6, 6, (3, 5)), False, False),
    (_cfg(2, 32, 32, 6, 6, 3, padding=3), False, False),    # dx would need padding -1
])
def test_winograd_is_chosen_only_where_it_applies(cfg, forward, backward, rng, monkeypatch):
    any_tile_count(monkeypatch)  # the tile-count rule: tests/test_winograd_b1.py
    calls = []
    original = F.conv._winograd_conv
    monkeypatch.setattr(F.conv, "_winograd_conv", lambda *a: calls.append(1) or original(*a))
    x, w, b = make_conv2d_inputs(cfg, np.float32, rng)
    y = F.conv2d(x, w, b, **hyper(cfg))
    assert len(calls) == forward
    assert_close(y, R.conv2d(*as_float64(x, w, b), **hyper(cfg)), np.float32, "conv2d")
    gx, gw, _ = F.conv2d_backward(y, x, w, **hyper(cfg))
    assert len(calls) == forward + backward
    ex, ew, _ = R.conv2d_backward(*as_float64(y, x, w), **hyper(cfg))
    assert_close(gx, ex, np.float32, "grad_x")
    assert_close(gw, ew, np.float32, "grad_weight")


# ----------------------------------------------------------------------------- gradient checks

GRADCHECK_CONV2D = {
    "plain": _cfg(2, 2, 3, 5, 4, (3, 2)),
    "stride-padding": _cfg(1, 2, 2, 6, 5, 3, stride=2, padding=1),
    "groups-dilation": _cfg(1, 4, 4, 6, 7, (2, 3), groups=2, dilation=(2, 1), padding=(1, 0)),
    "depthwise-nonsquare": _cfg(2, 3, 6, 5, 6, (2, 3), stride=(2, 1), padding=(1, 0),
                                dilation=(1, 2), groups=3),
    "same": _cfg(1, 2, 2, 4, 5, 3, padding="same"),
    "full-strided": _cfg(1, 1, 2, 4, 3, 2, padding="full", stride=(1, 2)),
    "stride-beyond-kernel": _cfg(1, 2, 1, 7, 7, 2, stride=3),
}


@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in GRADCHECK_CONV2D.items()])
def test_conv2d_gradcheck(cfg, rng):
    x, w, b = make_conv2d_inputs(dict(cfg, bias=True), np.float64, rng)
    kw = hyper(cfg)
    g = rng.standard_normal(expected_conv2d_shape(cfg))
    gx, gw, gb = F.conv2d_backward(g, x, w, **kw)

    def fn(x_, w_, b_):
        return F.conv2d(x_, w_, b_, **kw)

    check_gradient(fn, (x, w, b), 0, gx, g, name="grad_x")
    check_gradient(fn, (x, w, b), 1, gw, g, name="grad_weight")
    check_gradient(fn, (x, w, b), 2, gb, g, name="grad_bias")


@pytest.mark.parametrize("cfg", [
    pytest.param(_cfg1(2, 2, 3, 7, 3), id="plain"),
    pytest.param(_cfg1(1, 4, 4, 9, 2, stride=2, padding=1, dilation=2, groups=2), id="groups"),
    pytest.param(_cfg1(2, 2, 2, 5, 3, padding="same"), id="same"),
    pytest.param(_cfg1(1, 3, 3, 4, 3, padding="full", groups=3, stride=2), id="full-depthwise"),
])
def test_conv1d_gradcheck(cfg, rng):
    x, w, b = make_conv1d_inputs(cfg, np.float64, rng)
    kw = hyper(cfg)
    g = rng.standard_normal(expected_conv1d_shape(cfg))
    gx, gw, gb = F.conv1d_backward(g, x, w, **kw)

    def fn(x_, w_, b_):
        return F.conv1d(x_, w_, b_, **kw)

    check_gradient(fn, (x, w, b), 0, gx, g, name="grad_x")
    check_gradient(fn, (x, w, b), 1, gw, g, name="grad_weight")
    check_gradient(fn, (x, w, b), 2, gb, g, name="grad_bias")


def test_gradcheck_detects_wrong_gradients(rng):
    """The checker is not vacuous: slightly wrong gradients make it fail."""
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((2, 2, 3, 3))
    g = rng.standard_normal((1, 2, 3, 3))
    gx, gw, _ = F.conv2d_backward(g, x, w)

    def fn(x_, w_):
        return F.conv2d(x_, w_)

    check_gradient(fn, (x, w), 1, gw, g)  # the right one passes
    with pytest.raises(AssertionError):
        check_gradient(fn, (x, w), 1, gw * (1 + 1e-4), g)
    wrong = gx.copy()
    wrong[0, 1, 4, 4] += 1e-4
    with pytest.raises(AssertionError):
        check_gradient(fn, (x, w), 0, wrong, g)
    with pytest.raises(AssertionError):  # the gradient of another weighting
        check_gradient(fn, (x, w), 0, gx, g + 0.01)

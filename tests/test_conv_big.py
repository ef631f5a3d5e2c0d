"""The direct row kernels of large-image convolutions with few input channels (issue 11,
_kernels/conv_rows.pyx, csrc/cnncore_conv_rows.h): against the NumPy reference in float32
and float64 at every instruction-set level this CPU has, on odd shapes (1x1 images, kernel
as large as the input, strides beyond the kernel, rectangular and dilated kernels, every
padding, widths that are not whole vectors or strips, output channels that are not whole
blocks); bit-identical at 1, 2 and 3 threads; the planner's choice."""

import numpy as np
import pytest

from cnncore import functional as F
from cnncore import layers
from cnncore import reference as R
from cnncore._kernels import conv_rows

from _conv_cases import ODD_CASES, conv_case
from _gradcheck import assert_close

DTYPES = [np.float32, np.float64]
ISAS = list(range(conv_rows.ISA + 1))  # baseline, AVX2 + FMA, AVX-512F (as available)


_cfg = conv_case


CONFIGS = {
    **ODD_CASES,
    "rectangular-everything": _cfg(2, 4, 6, 11, 9, (3, 2), stride=(2, 1), padding=(1, 2),
                                   dilation=(1, 3)),
    "strided-wide": _cfg(1, 3, 9, 9, 103, (7, 5), stride=(2, 3), padding=(3, 2)),
    "dilated-wide": _cfg(1, 2, 5, 8, 61, 3, padding=2, dilation=2),
    "no-bias": _cfg(2, 3, 13, 6, 50, 5, padding=2, bias=False),
    "one-out-channel": _cfg(1, 8, 1, 5, 40, 5, padding=2),
    "full-padding": _cfg(1, 2, 3, 5, 4, 3, padding="full"),
}
# every padding 0..k-1 of a 5x5 kernel, on widths around the vector and strip widths
# (8, 16: vectors; 24, 48: strips of 3 vectors; doubles half of these)
PADDED = {f"w{w}-p{p}": _cfg(1, 3, 9, 7, w, 5, padding=p)
          for w in (5, 8, 17, 24, 30, 47, 52) for p in range(5)}
PARAMS = [pytest.param(c, id=name) for name, c in {**CONFIGS, **PADDED}.items()]


def _inputs(cfg, dtype, g):
    x = g.standard_normal((cfg["n"], cfg["c_in"], cfg["h"], cfg["w"])).astype(dtype)
    w = g.standard_normal((cfg["c_out"], cfg["c_in"]) + cfg["k"]).astype(dtype)
    b = g.standard_normal(cfg["c_out"]).astype(dtype) if cfg["bias"] else None
    return x, w, b


def _rows(x, w, b, hp, n_threads=1, isa=-1):
    """The row kernels called directly (the planner picks them for wide outputs only)."""
    geo = F.conv._conv_geometry("conv2d", x.shape, w.shape, hp["stride"], hp["padding"],
                                hp["dilation"], 1)
    sh, sw, ph, pw, dh, dw = geo.kernel_args()[:-1]
    y = np.full((x.shape[0], w.shape[0], *geo.out_hw), np.nan, dtype=x.dtype)
    wq = conv_rows.row_width(geo.out_hw[1], w.shape[3], sw, dw)
    work = np.full((n_threads, conv_rows.work_size(x.shape[1], w.shape[2], wq, sw)), np.nan,
                   dtype=x.dtype)
    bias = b if b is not None else np.empty(0, dtype=x.dtype)
    conv_rows.forward(x, w, bias, y, work, sh, sw, ph, pw, dh, dw, n_threads, isa)
    return y


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", PARAMS)
def test_rows_match_reference(cfg, dtype, isa, rng):
    x, w, b = _inputs(cfg, dtype, rng)
    want = R.conv2d(x.astype(np.float64), w.astype(np.float64),
                    None if b is None else b.astype(np.float64), **cfg["hp"])
    assert_close(_rows(x, w, b, cfg["hp"], isa=isa), want, dtype, f"isa {isa}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", PARAMS[:len(CONFIGS)])
def test_rows_bit_identical_across_threads(cfg, dtype, rng):
    x, w, b = _inputs(cfg, dtype, rng)
    for isa in ISAS:
        first = _rows(x, w, b, cfg["hp"], 1, isa)
        for n_threads in (2, 3):
            np.testing.assert_array_equal(_rows(x, w, b, cfg["hp"], n_threads, isa), first)


def _geometry(x_shape, w_shape, **hp):
    hp = dict(dict(stride=1, padding=0, dilation=1), **hp)
    return F.conv._ConvGeometry("conv2d", x_shape, w_shape, hp["stride"], hp["padding"],
                                hp["dilation"], 1)


@pytest.mark.parametrize("x_shape, w_shape, hp, kept", [
    ((1, 8, 2048, 2048), (16, 8, 5, 5), dict(padding=2), False),   # issue 11
    ((1, 8, 2048, 2048), (16, 8, 5, 5), dict(padding=2), True),    # Conv2d in eval
    ((1, 3, 1024, 1024), (16, 3, 5, 5), dict(padding=2), False),
    ((1, 3, 2048, 2048), (32, 3, 3, 3), dict(padding=1), True),
    ((1, 3, 2048, 2048), (32, 3, 7, 7), dict(stride=2, padding=3), False),
    ((1, 16, 1024, 1024), (16, 16, 3, 3), dict(padding=1), True),  # was Winograd
])
def test_planner_picks_rows_for_large_images(x_shape, w_shape, hp, kept):
    geo = _geometry(x_shape, w_shape, **hp)
    c_out, c_in, kh, kw = w_shape
    assert F.planner.conv_algorithm(geo, c_in, c_out, kh, kw, n=1, kept=kept) == "rows"
    # the gradients keep their algorithms
    assert F.planner.conv_algorithm(geo, c_in, c_out, kh, kw, backward=True, n=1) != "rows"


@pytest.mark.parametrize("x_shape, w_shape, hp, groups", [
    ((32, 3, 32, 32), (32, 3, 3, 3), {}, 1),            # narrow rows
    ((1, 256, 256, 256), (256, 256, 3, 3), {}, 1),      # many channels
    ((1, 64, 256, 256), (64, 64, 1, 1), {}, 1),         # 1x1: the input is the GEMM operand
    ((1, 8, 256, 256), (8, 1, 5, 5), dict(padding=2), 8),  # depthwise: the direct kernels
])
def test_planner_keeps_other_algorithms(x_shape, w_shape, hp, groups):
    hp = dict(dict(stride=1, padding=0, dilation=1), **hp)
    geo = F.conv._ConvGeometry("conv2d", x_shape, w_shape, hp["stride"], hp["padding"],
                               hp["dilation"], groups)
    c_out, cg, kh, kw = w_shape
    assert F.planner.conv_algorithm(geo, x_shape[1], c_out, kh, kw, n=x_shape[0]) != "rows"


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_and_layer_take_rows_on_a_wide_image(dtype, rng, monkeypatch):
    """Through the public API (functional and Conv2d in eval), one moderately large image:
    the row kernels run, agree with the reference, and are bit-identical at 1-3 threads."""
    calls = []
    real = conv_rows.forward
    monkeypatch.setattr(F.conv._conv_rows, "forward",
                        lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(F._common, "_MIN_FLOPS_PER_THREAD", 1)  # let every thread work
    x = rng.standard_normal((1, 8, 70, 131)).astype(dtype)
    conv = layers.Conv2d(8, 11, 5, padding=2, dtype=dtype, rng=0).eval()
    conv.bias.data = rng.standard_normal(11).astype(dtype)
    w, b = conv.weight.data, conv.bias.data
    want = R.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                    padding=2)
    first = F.conv2d(x, w, b, padding=2, n_threads=1)
    assert_close(first, want, dtype)
    for n_threads in (2, 3):
        np.testing.assert_array_equal(F.conv2d(x, w, b, padding=2, n_threads=n_threads),
                                      first)
    np.testing.assert_array_equal(conv(x), first)
    assert len(calls) == 4 and calls[1:3] == [2, 3]


def test_isa_levels_agree():
    """The instruction-set levels sum in the same order; only fused multiply-adds round
    differently."""
    g = np.random.default_rng(0)
    x = g.standard_normal((1, 3, 9, 77)).astype(np.float32)
    w = g.standard_normal((10, 3, 5, 5)).astype(np.float32)
    hp = dict(stride=1, padding=2, dilation=1)
    base = _rows(x, w, None, hp, isa=0)
    for isa in ISAS[1:]:
        np.testing.assert_allclose(_rows(x, w, None, hp, isa=isa), base, rtol=1e-5,
                                   atol=1e-5)
    assert conv_rows.ISA in (0, 1, 2)

"""The packed-weight GEMM (csrc/cnncore_gemm.h) and Winograd products on it: the kernel at
every ISA level this machine has, against float64 NumPy; the packing; the planner's rule;
convolutions through it against the reference, bit-identical at 1, 2 and 3 threads, and the
packed weights an eval-mode Conv2d keeps."""

import numpy as np
import pytest

from cnncore import functional as F
from cnncore import reference as R
from cnncore._kernels import winograd as W
from cnncore.layers import Conv2d
from cnncore.optim import SGD

from _gradcheck import as_float64, assert_close
from test_conv import _cfg, any_tile_count, hyper, make_conv2d_inputs

DTYPES = [np.float32, np.float64]
ISAS = list(range(W.ISA + 1))
OB = 6  # rows per packed block (CNN_PGEMM_OB)

needs_packed = pytest.mark.skipif(not W.PACKED, reason="the packed GEMM runs on AVX-512 "
                                  "machines only (elsewhere BLAS does the products)")


def pack(w):
    """The packed copy of w (M, K) by its definition: block ob, k-major, zeros past M."""
    m, k = w.shape
    rows = W.packed_rows(m)
    padded = np.zeros((rows, k), w.dtype)
    padded[:m] = w
    return padded.reshape(rows // OB, OB, k).transpose(0, 2, 1).reshape(rows // OB, OB * k)


# (M, K, N): one row and column; M and N not multiples of the blocks (6 rows, 4 blocks in
# the tails) nor of the vectors; exactly the strips; N below one strip (tails only).
SHAPES = [(1, 1, 1), (5, 3, 7), (25, 2, 40), (24, 17, 64), (30, 9, 100), (7, 33, 130),
          (50, 64, 65), (13, 5, 15)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pgemm_matches_numpy(shape, isa, dtype, rng):
    m, k, n = shape
    w = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n + W.PGEMM_PAD)).astype(dtype)
    for bias in (None, rng.standard_normal(m).astype(dtype)):
        c = np.full((m, n + 3), 7.0, dtype)
        W.pgemm(isa, pack(w), b, bias if bias is not None else np.empty(0, dtype), c, n)
        expected = w.astype(np.float64) @ b[:, :n].astype(np.float64)
        if bias is not None:
            expected += bias[:, None]
        assert_close(c[:, :n], expected, dtype, f"isa {isa}")
        assert (c[:, n:] == 7).all(), "columns past N were written"


def test_pgemm_rejects_inconsistent_shapes(rng):
    w = rng.standard_normal((5, 3)).astype(np.float32)
    b = np.zeros((3, 8 + W.PGEMM_PAD), np.float32)
    c = np.zeros((5, 8), np.float32)
    none = np.empty(0, np.float32)
    with pytest.raises(ValueError, match="isa"):
        W.pgemm(W.ISA + 1, pack(w), b, none, c, 8)
    with pytest.raises(ValueError, match="inconsistent"):
        W.pgemm(0, pack(w), b[:, :8].copy(), none, c, 8)  # no room to read past N
    with pytest.raises(ValueError, match="inconsistent"):
        W.pgemm(0, pack(w)[:1], b, none, c, 8)
    with pytest.raises(ValueError, match="inconsistent"):
        W.pgemm(0, pack(w), b, np.zeros(4, np.float32), c, 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("o", [1, 6, 7, 24, 25, 50])
def test_pack_weights_layout(o, dtype, rng):
    u = rng.standard_normal((16, o, 5)).astype(dtype)
    up = np.full((16, W.packed_rows(o) * 5), np.nan, dtype)
    W.pack_weights(u, up, 2)
    assert W.packed_rows(o) % 24 == 0 and W.packed_rows(o) >= o
    for xi in (0, 7, 15):
        np.testing.assert_array_equal(up[xi], pack(u[xi]).ravel())
    with pytest.raises(ValueError, match="Up must be"):
        W.pack_weights(u, up[:, 1:].copy(), 1)


def test_planner_rule(monkeypatch):
    p = F.planner
    monkeypatch.setattr(W, "PACKED", True)
    # 4x4 outputs: 4 tiles a sample; 64 columns from a block of 16 samples
    assert p.winograd_packed(16, 16, (4, 4), kept=True)
    assert not p.winograd_packed(15, 15, (4, 4), kept=True)   # 60 columns: BLAS
    assert not p.winograd_packed(16, 16, (4, 4), kept=False)  # 64 tiles: packing not paid
    assert p.winograd_packed(32, 16, (4, 4), kept=False)      # 128 tiles
    assert p.winograd_packed(1, 1, (24, 24), kept=False)      # 144 tiles in one sample
    assert not p.winograd_packed(1, 1, (22, 21), kept=False)  # 121 tiles
    assert p.winograd_packed(1, 1, (22, 21), kept=True)
    monkeypatch.setattr(W, "PACKED", False)
    assert not p.winograd_packed(64, 16, (32, 32), kept=True)


@pytest.fixture
def packed_calls(monkeypatch):
    """Record whether each Winograd forward kernel call was given packed weights."""
    calls = []
    original = W.forward

    def spy(*args, Up=None):
        calls.append(Up is not None)
        return original(*args, Up=Up)
    monkeypatch.setattr(W, "forward", spy)
    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_CHANNELS_BACKWARD", 1)
    monkeypatch.setattr(F.planner, "_WINOGRAD_PACK_MIN_TILES", 0)
    any_tile_count(monkeypatch)
    return calls


# Every block at least 64 tiles (the packed products), with odd sizes (partial last tiles,
# columns past the last full strip), channel counts off the 6-row blocks, padding 0 to 2;
# the last has a short last block (3 samples of 5x5 tiles: blocks of 3 and 1 -> BLAS).
PACKED_CASES = {
    "b1-16x16-pad1": _cfg(1, 5, 7, 16, 16, 3, padding=1),
    "b2-odd-pad0": _cfg(2, 9, 25, 17, 19, 3),
    "b3-odd-pad2": _cfg(3, 4, 13, 11, 13, 3, padding=(2, 1), bias=False),
    "b4-short-block": _cfg(4, 6, 8, 9, 9, 3, padding=1),
}


@needs_packed
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in PACKED_CASES.items()])
def test_conv_with_packed_products_matches_reference(cfg, dtype, rng, packed_calls):
    x, w, b = make_conv2d_inputs(cfg, dtype, rng)
    results = {}
    for threads in (1, 2, 3):
        del packed_calls[:]
        y = F.conv2d(x, w, b, **hyper(cfg), n_threads=threads)
        gy = np.cos(np.arange(y.size, dtype=dtype)).reshape(y.shape)
        grads = F.conv2d_backward(gy, x, w, **hyper(cfg), n_threads=threads)
        assert packed_calls == [True, True], "forward and input gradient: packed products"
        results[threads] = (y, *grads)
    for threads in (2, 3):
        for name, a, e in zip(("y", "grad_x", "grad_weight", "grad_bias"), results[threads],
                              results[1]):
            np.testing.assert_array_equal(a, e, err_msg=f"{name} at {threads} threads")
    y, gx, gw, gb = results[1]
    assert_close(y, R.conv2d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv2d")
    gy = np.cos(np.arange(y.size, dtype=dtype)).reshape(y.shape)
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")


@needs_packed
def test_packed_and_blas_products_agree(rng, packed_calls, monkeypatch):
    cfg = _cfg(2, 12, 30, 16, 16, 3, padding=1)
    x, w, b = make_conv2d_inputs(cfg, np.float64, rng)
    y_packed = F.conv2d(x, w, b, **hyper(cfg))
    monkeypatch.setattr(W, "PACKED", False)
    y_blas = F.conv2d(x, w, b, **hyper(cfg))
    assert packed_calls == [True, False]
    np.testing.assert_allclose(y_packed, y_blas, rtol=1e-12, atol=1e-12)


@needs_packed
def test_eval_conv_keeps_packed_weights_until_they_change(rng, packed_calls, monkeypatch):
    layer = Conv2d(8, 16, 3, padding=1)
    layer.eval()
    x = rng.standard_normal((16, 8, 4, 4)).astype(np.float32)  # 64 tiles: kept weights only
    packs = []
    original = W.pack_weights
    monkeypatch.setattr(W, "pack_weights", lambda *a: (packs.append(1), original(*a))[1])
    y1 = layer.forward(x)
    y2 = layer.forward(x)
    assert packed_calls == [True, True] and len(packs) == 1
    np.testing.assert_array_equal(y1, y2)
    layer.weight.grad[...] = 1.0
    SGD([layer.weight], lr=0.5).step()
    y3 = layer.forward(x)
    assert len(packs) == 2
    assert_close(y3, R.conv2d(*as_float64(x, layer.weight.data, layer.bias.data), padding=1),
                 np.float32, "after a step")

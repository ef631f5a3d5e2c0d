"""The packed-weight GEMM (csrc/cnncore_gemm.h) and the convolutions on it (Winograd's
products, im2col and 1x1 tiles): the kernel at every ISA level this machine has, against
float64 NumPy; the packing; the planner's rule; convolutions through it against the
reference, bit-identical at 1, 2 and 3 threads; the packed weights an eval-mode Conv2d
keeps."""

import numpy as np
import pytest

from cnncore import functional as F
from cnncore import reference as R
from cnncore._kernels import _blas as B
from cnncore._kernels import winograd as W
from cnncore.layers import Conv2d
from cnncore.optim import SGD

from _gradcheck import as_float64, assert_close
from test_conv import _cfg, any_tile_count, hyper, make_conv2d_inputs

DTYPES = [np.float32, np.float64]
ISAS = list(range(B.ISA + 1))
OB = 6  # rows per packed block (CNN_PGEMM_OB)

def record_calls(monkeypatch, module, name, what):
    """Replace ``module.name`` by a spy that appends ``what(args)`` (positional arguments)
    to the returned list before calling the original."""
    calls = []
    original = getattr(module, name)

    def spy(*args):
        calls.append(what(args))
        return original(*args)
    monkeypatch.setattr(module, name, spy)
    return calls


def pack_any_product(monkeypatch):
    """Let the packed GEMM take products of any size and any batch."""
    monkeypatch.setattr(F.planner, "_PACK_MIN_COLS", 0)
    monkeypatch.setattr(F.planner, "_PACK_MIN_MACS", 0)


needs_packed = pytest.mark.skipif(not B.PACKED, reason="the packed GEMM runs on AVX-512 "
                                  "machines only (elsewhere BLAS does the products)")


def pack(w):
    """The packed copy of w (M, K) by its definition: block ob, k-major, zeros past M."""
    m, k = w.shape
    rows = B.packed_rows(m)
    padded = np.zeros((rows, k), w.dtype)
    padded[:m] = w
    return padded.reshape(rows // OB, OB, k).transpose(0, 2, 1).ravel()


# (M, K, N): one row and column; M and N not multiples of the blocks (6 rows, 2 or 4 blocks
# in the tails) nor of the vectors; exactly the strips; N below one strip (tails only) or
# below one vector (the scalar loop).
SHAPES = [(1, 1, 1), (5, 3, 7), (25, 2, 40), (24, 17, 64), (30, 9, 100), (7, 33, 130),
          (50, 64, 65), (13, 5, 15), (3, 4, 17), (49, 8, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pgemm_matches_numpy(shape, isa, dtype, rng):
    m, k, n = shape
    w = rng.standard_normal((m, k)).astype(dtype)
    # B's rows are wider than N (ldb > N) and NaN past N: the kernel must not read there
    b = np.full((k, n + 5), np.nan, dtype)
    b[:, :n] = rng.standard_normal((k, n))
    for bias in (None, rng.standard_normal(m).astype(dtype)):
        c = np.full((m, n + 3), 7.0, dtype)
        B.pgemm(isa, pack(w), k, b, bias if bias is not None else np.empty(0, dtype), c, n)
        expected = w.astype(np.float64) @ b[:, :n].astype(np.float64)
        if bias is not None:
            expected += bias[:, None]
        assert_close(c[:, :n], expected, dtype, f"isa {isa}")
        assert (c[:, n:] == 7).all(), "columns past N were written"


@pytest.mark.parametrize("isa", ISAS)
def test_pgemm_column_range_of_the_packed_weights(isa, rng):
    """Columns [k0, k0 + K) of a packed W: blocks are ks = W's width apart."""
    w = rng.standard_normal((31, 20))
    b = rng.standard_normal((7, 70))
    c = np.empty((31, 70))
    B.pgemm(isa, pack(w)[5 * OB:], 20, b, np.empty(0), c, 70)
    np.testing.assert_allclose(c, w[:, 5:12] @ b, rtol=1e-13, atol=1e-13)


def test_pgemm_rejects_inconsistent_shapes(rng):
    w = rng.standard_normal((5, 3)).astype(np.float32)
    b = np.zeros((3, 8), np.float32)
    c = np.zeros((5, 8), np.float32)
    none = np.empty(0, np.float32)
    with pytest.raises(ValueError, match="isa"):
        B.pgemm(B.ISA + 1, pack(w), 3, b, none, c, 8)
    with pytest.raises(ValueError, match="inconsistent"):
        B.pgemm(0, pack(w), 3, b, none, c, 9)
    with pytest.raises(ValueError, match="inconsistent"):
        B.pgemm(0, pack(w)[:10].copy(), 3, b, none, c, 8)
    with pytest.raises(ValueError, match="inconsistent"):
        B.pgemm(0, pack(w), 3, b, np.zeros(4, np.float32), c, 8)
    with pytest.raises(ValueError, match="wp must have"):
        B.pack(w, np.zeros(7, np.float32), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 6, 7, 24, 25, 50])
def test_pack_layout(m, dtype, rng):
    w = rng.standard_normal((m, 9)).astype(dtype)
    wp = np.full(B.packed_rows(m) * 9, np.nan, dtype)
    B.pack(w, wp, 2)
    assert B.packed_rows(m) % B.PACKED_ROWS == 0 and B.packed_rows(m) >= m
    np.testing.assert_array_equal(wp, pack(w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("o", [1, 6, 7, 24, 25, 50])
def test_winograd_pack_weights_layout(o, dtype, rng):
    u = rng.standard_normal((16, o, 5)).astype(dtype)
    up = np.full((16, B.packed_rows(o) * 5), np.nan, dtype)
    W.pack_weights(u, up, 2)
    for xi in (0, 7, 15):
        np.testing.assert_array_equal(up[xi], pack(u[xi]))
    with pytest.raises(ValueError, match="Up must be"):
        W.pack_weights(u, up[:, 1:].copy(), 1)


def test_planner_rule(monkeypatch):
    p = F.planner
    monkeypatch.setattr(B, "PACKED", True)
    # (batch, columns of a GEMM, columns a sample): 4x4 Winograd outputs (4 tiles a
    # sample) in blocks of 16 samples; 8x8 im2col outputs in tiles of whole samples
    assert p.packed_gemm(16, 64, 4, kept=True)
    assert not p.packed_gemm(15, 60, 4, kept=True)    # 60 columns: BLAS
    assert not p.packed_gemm(16, 64, 4, kept=False)   # 64 in the batch: packing not paid
    assert p.packed_gemm(32, 64, 4, kept=False)       # 128
    assert p.packed_gemm(2, 64, 64, kept=False)
    assert not p.packed_gemm(1, 64, 64, kept=False)
    assert p.packed_gemm(2, 64, 64, kept=False, macs=p._PACK_MIN_MACS)
    assert not p.packed_gemm(2, 64, 64, kept=False, macs=p._PACK_MIN_MACS - 1)  # BLAS
    monkeypatch.setattr(B, "PACKED", False)
    assert not p.packed_gemm(64, 1024, 1024, kept=True)


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
    monkeypatch.setattr(F.planner, "_PACK_MIN_COLS", 0)
    monkeypatch.setattr(F.planner, "_PACK_MIN_MACS", 0)
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
    monkeypatch.setattr(B, "PACKED", False)
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


@pytest.fixture
def im2col_packed_calls(monkeypatch):
    """Record whether each im2col / 1x1 forward kernel call was given packed weights."""
    pack_any_product(monkeypatch)
    return record_calls(monkeypatch, F.conv._conv, "conv2d_forward",
                        lambda a: a[-2] is not None)  # (..., n_threads, wp, m_blocks)


# im2col (stride 2, rectangular, dilated) and 1x1 tiles of at least 64 output pixels; at
# batch 1 on a small map the input channels are also split into blocks (k0 > 0 of the
# packed weights; the blocks after the first add partial outputs without the bias).
IM2COL_CASES = {
    "s2-3x3-pad1": _cfg(2, 5, 13, 17, 19, 3, stride=2, padding=1),
    "5x3-dilated": _cfg(1, 3, 7, 14, 20, (5, 3), padding=(1, 2), dilation=(1, 2)),
    "1x1": _cfg(3, 8, 26, 9, 8, 1, bias=False),
    "1x1-s2": _cfg(2, 8, 10, 17, 16, 1, stride=2),
    "b1-channel-blocks": _cfg(1, 64, 30, 8, 8, 3, padding=1),
}


@needs_packed
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in IM2COL_CASES.items()])
def test_im2col_with_packed_products_matches_reference(cfg, dtype, rng, monkeypatch,
                                                       im2col_packed_calls):
    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_CHANNELS", 10 ** 6)  # im2col, not Winograd
    monkeypatch.setattr(F.planner, "_ROWS_MAX_TAPS", 0)  # nor the row kernels
    x, w, b = make_conv2d_inputs(cfg, dtype, rng)
    results = []
    for threads in (1, 2, 3):
        results.append(F.conv2d(x, w, b, **hyper(cfg), n_threads=threads))
    assert im2col_packed_calls == [True] * 3
    for threads, y in zip((2, 3), results[1:]):
        np.testing.assert_array_equal(y, results[0], err_msg=f"at {threads} threads")
    assert_close(results[0], R.conv2d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv2d")


@needs_packed
def test_eval_conv_keeps_packed_im2col_weights(rng, monkeypatch, im2col_packed_calls):
    layer = Conv2d(16, 24, 3, stride=2, padding=1)
    layer.eval()
    x = rng.standard_normal((2, 16, 16, 16)).astype(np.float32)
    packs = []
    original = B.pack
    monkeypatch.setattr(B, "pack", lambda *a: (packs.append(1), original(*a))[1])
    y1 = layer.forward(x)
    y2 = layer.forward(x)
    assert im2col_packed_calls == [True, True] and len(packs) == 1
    np.testing.assert_array_equal(y1, y2)
    layer.weight.data[...] *= 2
    layer.weight.mark_changed()
    y3 = layer.forward(x)
    assert len(packs) == 2
    assert_close(y3, R.conv2d(*as_float64(x, layer.weight.data, layer.bias.data), stride=2,
                              padding=1), np.float32, "after mark_changed")


@pytest.fixture
def grouped_calls(monkeypatch):
    """Record the samples per task of each grouped im2col forward call."""
    pack_any_product(monkeypatch)
    calls = record_calls(monkeypatch, F.conv._conv, "conv2d_forward_grouped", lambda a: a[-2])
    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_CHANNELS", 10 ** 6)
    monkeypatch.setattr(F.planner, "_DENSE_MAX_BYTES", 0)
    return calls


# Output maps of fewer than 64 pixels: groups of ceil(64 / P) samples, the last one short.
GROUPED_CASES = {
    "s2-3x3-4x4-out": (_cfg(5, 7, 11, 8, 8, 3, stride=2, padding=1), 4),
    "1x1-7x7": (_cfg(3, 9, 13, 7, 7, 1, bias=False), 2),
    "3x3-rectangular": (_cfg(4, 3, 8, 5, 7, (3, 5), padding=(1, 2)), 2),
    "1x1-image": (_cfg(70, 4, 6, 1, 1, 3, padding=1), 64),
    "kernel-equals-input": (_cfg(65, 2, 5, 3, 4, (3, 4)), 64),
}


@needs_packed
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in GROUPED_CASES.items()])
def test_grouped_im2col_matches_reference(case, dtype, rng, grouped_calls):
    cfg, group = case
    x, w, b = make_conv2d_inputs(cfg, dtype, rng)
    results = [F.conv2d(x, w, b, **hyper(cfg), n_threads=t) for t in (1, 2, 3)]
    assert grouped_calls == [group] * 3
    for threads, y in zip((2, 3), results[1:]):
        np.testing.assert_array_equal(y, results[0], err_msg=f"at {threads} threads")
    assert_close(results[0], R.conv2d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv2d")


@needs_packed
def test_grouped_im2col_only_when_it_applies(rng, grouped_calls, monkeypatch):
    x = rng.standard_normal((8, 4, 4, 4)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    F.conv2d(x, w, padding=1)                      # 16 pixels: groups of 4
    F.conv2d(x, w[:, :2], padding=1, groups=2)     # grouped convolution: per sample
    F.conv2d(x[:3], w, padding=1)                  # 48 columns in the whole batch
    F.conv2d(np.ones((2, 4, 9, 9), np.float32), w)  # 49 pixels, 98 columns... groups of 2
    F.conv2d(np.ones((2, 4, 10, 10), np.float32), w)  # 64 pixels: tiles of one sample
    assert grouped_calls == [4, 2]
    monkeypatch.setattr(B, "PACKED", False)
    F.conv2d(x, w, padding=1)
    assert grouped_calls == [4, 2]


def test_grouped_kernel_checks_its_arguments(rng):
    x = np.zeros((2, 3, 4, 4), np.float32)
    y = np.zeros((2, 5, 4, 4), np.float32)
    wp = np.zeros(B.packed_rows(5) * 27, np.float32)
    none = np.empty(0, np.float32)
    work = np.zeros((1, (27 + 5) * 32), np.float32)
    F.conv._conv.conv2d_forward_grouped(x, wp, none, y, work, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1)
    with pytest.raises(ValueError, match="packed operand of"):
        F.conv._conv.conv2d_forward_grouped(x, wp[1:].copy(), none, y, work, 3, 3, 1, 1, 1, 1,
                                            1, 1, 2, 1)
    with pytest.raises(ValueError, match="work rows"):
        F.conv._conv.conv2d_forward_grouped(x, wp, none, y, work[:, 1:].copy(), 3, 3, 1, 1,
                                            1, 1, 1, 1, 2, 1)


@needs_packed
@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_output_channel_blocks(dtype, rng, monkeypatch, im2col_packed_calls):
    """Batch 1 on a small map: the 1x1 convolution's tasks are blocks of output channels
    (whole packed row blocks) instead of input-channel blocks with partial outputs."""
    seen = record_calls(monkeypatch, F.conv._conv, "conv2d_forward",
                        lambda a: (len(a[5]), a[-1]))  # (partial-output blocks, m_blocks)
    x = rng.standard_normal((1, 128, 8, 8)).astype(dtype)
    w = rng.standard_normal((50, 128, 1, 1)).astype(dtype)
    b = rng.standard_normal(50).astype(dtype)
    results = [F.conv2d(x, w, b, n_threads=t) for t in (1, 2, 3)]
    assert seen[0][0] == 0 and seen[0][1] > 1 and len(set(seen)) == 1
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert_close(results[0], R.conv2d(*as_float64(x, w, b)), dtype, "conv2d")


@pytest.mark.parametrize("m_blocks", [2, 3])
def test_pointwise_output_channel_blocks_kernel(m_blocks, rng):
    """The kernel's output-channel blocks, with tiles too short for the packed GEMM (BLAS
    then computes each block's rows), and its argument checks."""
    x = rng.standard_normal((2, 8, 6, 10))
    w = rng.standard_normal((17, 8, 1, 1))
    b = rng.standard_normal(17)
    wp = np.empty(B.packed_rows(17) * 8)
    B.pack(w.reshape(17, 8), wp, 1)
    y = np.full((2, 17, 6, 10), np.nan)
    work = np.zeros((2, 1))
    parts = np.zeros((0, 2, 17, 60))
    conv = F.conv._conv
    conv.conv2d_forward(x, w, b, y, work, parts, 1, 1, 0, 0, 1, 1, 1, 2, 2, wp, m_blocks)
    np.testing.assert_allclose(y, R.conv2d(x, w, b), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="blocks of output channels"):
        conv.conv2d_forward(x, w, b, y, work, parts, 1, 1, 0, 0, 1, 1, 1, 2, 2, None, 2)
    with pytest.raises(ValueError, match="blocks of output channels"):
        conv.conv2d_forward(x, w, b, y, work, parts, 1, 1, 0, 0, 1, 1, 1, 2, 2, wp, 4)


# ----------------------------------------------------------------------------- linear layers

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 8, 16, 17, 64])
def test_linear_backward_into_adds_into_the_gradients(n, dtype, rng):
    """The layer path adds the weight and bias gradients into existing ones in the kernel
    (packed GEMM up to MAX_PACKED_BATCH samples where it runs, BLAS otherwise); the
    functional one returns fresh gradients. Both against float64 NumPy, bit-identical at
    1, 2 and 3 threads."""
    x = rng.standard_normal((n, 70)).astype(dtype)
    w = rng.standard_normal((150, 70)).astype(dtype)
    dy = rng.standard_normal((n, 150)).astype(dtype)
    gw0 = rng.standard_normal(w.shape).astype(dtype)
    gb0 = rng.standard_normal(150).astype(dtype)
    x64, w64, dy64 = as_float64(x, w, dy)
    outs = []
    for threads in (1, 2, 3):
        gw, gb = gw0.copy(), gb0.copy()
        gx = F.dense.linear_backward_into(dy, x, w, gw, gb, n_threads=threads)
        outs.append((gx, gw, gb))
        assert_close(gx, dy64 @ w64, dtype, "grad_x")
        assert_close(gw, gw0 + dy64.T @ x64, dtype, "grad_weight")
        assert_close(gb, gb0 + dy64.sum(0), dtype, "grad_bias")
    for other in outs[1:]:
        for a, e in zip(other, outs[0]):
            np.testing.assert_array_equal(a, e)
    gx, gw, gb = F.linear_backward(dy, x, w)
    assert_close(gw, dy64.T @ x64, dtype, "fresh grad_weight")
    assert_close(gb, dy64.sum(0), dtype, "fresh grad_bias")


def test_linear_backward_into_odd_gradients_and_no_bias(rng):
    x = rng.standard_normal((4, 6))
    w = rng.standard_normal((5, 6))
    dy = rng.standard_normal((4, 5))
    gw = np.asfortranarray(np.ones((5, 6)))  # not C-contiguous: added by NumPy instead
    gx = F.dense.linear_backward_into(dy, x, w, gw, None)
    np.testing.assert_allclose(gw, 1 + dy.T @ x, rtol=1e-12)
    np.testing.assert_allclose(gx, dy @ w, rtol=1e-12)
    gw = np.zeros((5, 6))
    F.dense.linear_backward_into(dy[:0], x[:0], w, gw)  # an empty batch adds nothing
    assert not gw.any()


def test_linear_kernel_rejects_packed_for_large_batches(rng):
    n = F.dense._dense.MAX_PACKED_BATCH + 1
    x, dy, w = np.zeros((n, 4)), np.zeros((n, 3)), np.zeros((3, 4))
    with pytest.raises(ValueError, match="packed needs a batch"):
        F.dense._dense.linear_backward(dy, x, w, np.zeros_like(x), np.zeros_like(w),
                                       np.zeros(3), 1, False, True)


@needs_packed
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in GROUPED_CASES.items()])
def test_grouped_input_gradient_matches_reference(case, dtype, rng, monkeypatch):
    """Small output maps: the input gradient over groups of samples on the packed GEMM
    (col = W^T @ dy, then col2im), the weight gradient as before."""
    cfg, group = case
    pack_any_product(monkeypatch)
    calls = record_calls(monkeypatch, F.conv._conv, "conv2d_input_grad_grouped",
                         lambda a: a[-2])
    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_CHANNELS_BACKWARD", 10 ** 6)
    monkeypatch.setattr(F.planner, "_DENSE_MAX_BYTES", 0)
    x, w, _ = make_conv2d_inputs(cfg, dtype, rng)
    y = R.conv2d(x, w, **hyper(cfg))
    gy = rng.standard_normal(y.shape).astype(dtype)
    results = [F.conv2d_backward(gy, x, w, **hyper(cfg), n_threads=t) for t in (1, 2, 3)]
    assert calls == [group] * 3
    for threads, r in zip((2, 3), results[1:]):
        for a, e in zip(r, results[0]):
            np.testing.assert_array_equal(a, e, err_msg=f"at {threads} threads")
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(results[0][0], ex, dtype, "grad_x")
    assert_close(results[0][1], ew, dtype, "grad_weight")
    gx, gw, _ = F.conv2d_backward(gy, x, w, **hyper(cfg), need_grad_x=False)
    assert gx is None and len(calls) == 3
    np.testing.assert_array_equal(gw, results[0][1])


def test_pack_takes_strided_matrices(rng):
    w = rng.standard_normal((9, 7))
    wp = np.empty(B.packed_rows(7) * 9)
    B.pack(w.T, wp, 1)  # (7, 9) view, strides (8, 56) bytes
    np.testing.assert_array_equal(wp, pack(np.ascontiguousarray(w.T)))
    with pytest.raises(ValueError, match="positive strides"):
        B.pack(w[::-1], np.empty(B.packed_rows(9) * 7), 1)


@needs_packed
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in IM2COL_CASES.items()])
def test_input_gradient_with_packed_products_matches_reference(cfg, dtype, rng, monkeypatch):
    """Tiles of at least 64 output pixels: the input gradient's col = W^T @ dy on the packed
    GEMM (W^T packed per call); channel blocks whose first row is off a packed block use
    BLAS. Against the reference, bit-identical at 1, 2 and 3 threads."""
    pack_any_product(monkeypatch)
    seen = record_calls(monkeypatch, F.conv._conv, "conv2d_backward",
                        lambda a: a[-1] is not None)
    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_CHANNELS_BACKWARD", 10 ** 6)
    x, w, _ = make_conv2d_inputs(cfg, dtype, rng)
    gy = rng.standard_normal(R.conv2d(x, w, **hyper(cfg)).shape).astype(dtype)
    results = [F.conv2d_backward(gy, x, w, **hyper(cfg), n_threads=t) for t in (1, 2, 3)]
    assert seen == [True] * 3
    for threads, r in zip((2, 3), results[1:]):
        for a, e in zip(r, results[0]):
            np.testing.assert_array_equal(a, e, err_msg=f"at {threads} threads")
    ex, ew, _ = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(results[0][0], ex, dtype, "grad_x")
    assert_close(results[0][1], ew, dtype, "grad_weight")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("o,c", [(7, 5), (24, 30), (1, 13)])
def test_pack_weights_for_input_grad_is_the_packed_transposed_transform(o, c, dtype, rng):
    u = rng.standard_normal((16, o, c)).astype(dtype)
    ut = np.empty((16, c, o), dtype)
    W.transform_for_input_grad(u, ut, 2)
    up = np.full((16, B.packed_rows(c) * o), np.nan, dtype)
    W.pack_weights(u, up, 2, True)
    for xi in range(16):
        np.testing.assert_array_equal(up[xi], pack(ut[xi]))
    with pytest.raises(ValueError, match="Up must be"):
        W.pack_weights(u, up[:, 1:].copy(), 1, True)


def test_winograd_forward_without_u_needs_packed_full_blocks(rng):
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)  # 16 tiles a sample
    y = np.empty((3, 5, 8, 8), np.float32)
    none = np.empty(0, np.float32)
    work = np.zeros((1, W.work_size(4, 5, 8, 8, 3, False)), np.float32)
    up = np.zeros((16, B.packed_rows(5) * 4), np.float32)
    with pytest.raises(ValueError, match="without U"):  # last block: 1 sample, 16 tiles
        W.forward(x, np.empty((0, 0, 0), np.float32), none, y, work, none, 1, 1, 3, 1, Up=up)
    with pytest.raises(ValueError, match="without U"):
        W.forward(x, np.empty((0, 0, 0), np.float32), none, y, work, none, 1, 1, 3, 1)

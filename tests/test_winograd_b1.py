"""Winograd at small batches: the tile-count rule of the planner, the work of one block split
over threads (bit-identical at any thread count), and the weight transforms an eval-mode
Conv2d keeps while its weight does not change."""

import numpy as np
import pytest

import cnncore
from cnncore import functional as F
from cnncore import reference as R
from cnncore.functional.conv import _conv_geometry
from cnncore.layers import Conv2d
from cnncore.optim import SGD, Adam

from _gradcheck import as_float64, assert_close
from test_conv import _cfg, any_tile_count, hyper, make_conv2d_inputs, winograd_calls  # noqa: F401

DTYPES = [np.float32, np.float64]

# Batch 1 and 2, odd sizes (partial last tile row and column), padding 0, 1, 2.
SMALL_BATCH = {
    "b1-pad1": _cfg(1, 5, 6, 8, 8, 3, padding=1),
    "b1-odd-pad0": _cfg(1, 4, 3, 7, 9, 3),
    "b1-odd-pad2": _cfg(1, 3, 5, 5, 7, 3, padding=2),
    "b2-odd-pad1": _cfg(2, 6, 4, 9, 5, 3, padding=1, bias=False),
    "b2-pad2": _cfg(2, 4, 4, 4, 4, 3, padding=(2, 1)),
    "b1-1x1-image": _cfg(1, 3, 2, 1, 1, 3, padding=1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in SMALL_BATCH.items()])
def test_small_batch_winograd_matches_reference(cfg, dtype, rng, winograd_calls):
    x, w, b = make_conv2d_inputs(cfg, dtype, rng)
    y = F.conv2d(x, w, b, **hyper(cfg), n_threads=2)
    assert winograd_calls == [w.shape]
    assert_close(y, R.conv2d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv2d")
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, **hyper(cfg), n_threads=2)
    assert len(winograd_calls) == 2
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")
    assert_close(gb, eb, dtype, "grad_bias")


# Enough work that _threads grants 3 threads; batch 1 and 2 give fewer blocks than threads,
# so each block's transforms and GEMMs are split (checked through the shared buffer).
THREADED = {
    "b1-64ch": _cfg(1, 64, 64, 16, 16, 3, padding=1),
    "b1-odd-pad2": _cfg(1, 48, 40, 13, 11, 3, padding=2),
    "b2-odd-pad0": _cfg(2, 64, 48, 15, 9, 3, bias=False),
}


@pytest.fixture
def split_calls(monkeypatch):
    """Record, per kernel call, whether a block's work was split over the threads."""
    calls = []
    kernels = F.conv._winograd
    for name, shared in (("forward", 5), ("weight_grad", 4)):
        original = getattr(kernels, name)

        def spy(*args, _original=original, _name=name, _shared=shared, **kwargs):
            calls.append((_name, len(args[_shared]) > 0, args[-1]))
            return _original(*args, **kwargs)
        monkeypatch.setattr(kernels, name, spy)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [pytest.param(c, id=n) for n, c in THREADED.items()])
def test_bit_identical_at_1_2_3_threads(cfg, dtype, rng, monkeypatch, split_calls):
    any_tile_count(monkeypatch)
    x, w, b = make_conv2d_inputs(cfg, dtype, rng)
    y0 = F.conv2d(x, w, b, **hyper(cfg))
    gy = rng.standard_normal(y0.shape).astype(dtype)
    results = {}
    for threads in (1, 2, 3):
        del split_calls[:]
        y = F.conv2d(x, w, b, **hyper(cfg), n_threads=threads)
        grads = F.conv2d_backward(gy, x, w, **hyper(cfg), n_threads=threads)
        results[threads] = (y, *grads)
        # forward, weight gradient, input gradient: split exactly when threads > 1
        assert [c[:2] for c in split_calls] == [("forward", threads > 1),
                                                ("weight_grad", threads > 1),
                                                ("forward", threads > 1)]
        assert all(c[2] == threads for c in split_calls), split_calls
    for threads in (2, 3):
        for name, a, e in zip(("y", "grad_x", "grad_weight", "grad_bias"), results[threads],
                              results[1]):
            np.testing.assert_array_equal(a, e, err_msg=f"{name} at {threads} threads")
    y, gx, gw, gb = results[3]
    assert_close(y, R.conv2d(*as_float64(x, w, b), **hyper(cfg)), dtype, "conv2d")
    ex, ew, _ = R.conv2d_backward(*as_float64(gy, x, w), **hyper(cfg))
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")


def test_batch_blocks_and_split_blocks_agree(rng, monkeypatch):
    """Batch 3 on 2 threads splits over blocks; one block per call splits within it: the
    same operations in the same order, so the same bits."""
    any_tile_count(monkeypatch)
    monkeypatch.setattr(F.planner, "_WINOGRAD_MIN_TILES", 1)  # one sample per block
    x, w, b = make_conv2d_inputs(_cfg(3, 32, 32, 12, 10, 3, padding=1), np.float32, rng)
    whole = F.conv2d(x, w, b, padding=1, n_threads=2)
    each = np.concatenate([F.conv2d(x[i:i + 1], w, b, padding=1, n_threads=2)
                           for i in range(3)])
    np.testing.assert_array_equal(whole, each)


@pytest.mark.parametrize("dtype", DTYPES)
def test_input_grad_transform_is_that_of_the_flipped_kernel(dtype, rng):
    w = rng.standard_normal((5, 7, 3, 3)).astype(dtype)
    kernels = F.conv._winograd
    u = np.empty((16, 5, 7), dtype=dtype)
    kernels.transform_weights(w, u, 2)
    u_dx = np.empty((16, 7, 5), dtype=dtype)
    kernels.transform_for_input_grad(u, u_dx, 3)
    expected = np.empty_like(u_dx)
    kernels.transform_weights(np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)),
                              expected, 1)
    assert_close(u_dx, expected, dtype, "transform_for_input_grad")


# ----------------------------------------------------------------------------- planner

def _geo(n, c, h, padding=1):
    return _conv_geometry("test", (n, c, h, h), (c, c, 3, 3), 1, padding, 1, 1)


# (C, H = W, N) -> forward with the transforms computed per call, forward with them kept
# (eval-mode Conv2d), backward; see the measurements in planner.py.
PLANNER_CASES = [
    # ImageNet ResNet shapes
    (64, 56, 1, "winograd", "winograd", "winograd"),
    (128, 28, 1, "winograd", "winograd", "winograd"),
    (256, 14, 1, "winograd", "winograd", "im2col"),     # 49 tiles
    (256, 14, 2, "winograd", "winograd", "winograd"),
    (512, 7, 1, "im2col", "winograd", "im2col"),        # 16 tiles
    (512, 7, 2, "im2col", "winograd", "im2col"),        # 32
    (512, 7, 8, "winograd", "winograd", "winograd"),
    (512, 7, 64, "winograd", "winograd", "winograd"),
    # CIFAR ResNet shapes
    (64, 32, 1, "winograd", "winograd", "winograd"),
    (128, 16, 1, "winograd", "winograd", "winograd"),   # 64 tiles
    (256, 8, 1, "im2col", "winograd", "im2col"),        # 16
    (256, 8, 2, "im2col", "winograd", "im2col"),        # 32
    (256, 8, 8, "winograd", "winograd", "winograd"),
    (512, 4, 1, "im2col", "im2col", "im2col"),          # 4
    (512, 4, 2, "im2col", "im2col", "im2col"),          # 8
    (512, 4, 8, "im2col", "winograd", "im2col"),        # 32
    (512, 4, 64, "winograd", "winograd", "winograd"),
]


@pytest.mark.parametrize("c,h,n,forward,kept,backward", PLANNER_CASES)
def test_planner_choice_by_tile_count(c, h, n, forward, kept, backward):
    geo = _geo(n, c, h)
    assert F.planner.conv_algorithm(geo, c, c, 3, 3, n=n) == forward
    assert F.planner.conv_algorithm(geo, c, c, 3, 3, n=n, kept=True) == kept
    assert F.planner.conv_algorithm(geo, c, c, 3, 3, backward=True, n=n) == backward
    # unchanged rules: stride 2 never, few channels never
    strided = _conv_geometry("test", (n, c, h, h), (c, c, 3, 3), 2, 1, 1, 1)
    assert F.planner.conv_algorithm(strided, c, c, 3, 3, n=64) == "im2col"
    small = _geo(64, 8, h)
    assert F.planner.conv_algorithm(small, 8, 8, 3, 3, n=64) == "im2col"


def test_planner_does_not_depend_on_threads(rng, monkeypatch):
    """The choice is made from the shapes: the same algorithm at 1 and 2 threads."""
    chosen = []
    original = F.planner.conv_algorithm
    monkeypatch.setattr(F.planner, "conv_algorithm",
                        lambda *a, **k: chosen.append(original(*a, **k)) or chosen[-1])
    x = rng.standard_normal((1, 256, 8, 8)).astype(np.float32)
    w = rng.standard_normal((256, 256, 3, 3)).astype(np.float32)
    for threads in (1, 2):
        F.conv2d(x, w, padding=1, n_threads=threads)
    assert chosen == ["im2col", "im2col"]


# ----------------------------------------------------------------------------- kept transforms

@pytest.fixture
def transform_count(monkeypatch):
    """Count the weight transforms (the cache's misses)."""
    calls = []
    kernels = F.conv._winograd
    original = kernels.transform_weights
    monkeypatch.setattr(kernels, "transform_weights",
                        lambda *a: calls.append(a[0].shape) or original(*a))
    return calls


def _eval_conv(rng, dtype=np.float32, c=32, h=8):
    layer = Conv2d(c, c, 3, padding=1, dtype=dtype, rng=rng).eval()
    x = rng.standard_normal((1, c, h, h)).astype(dtype)
    return layer, x


def _fresh(layer, x):
    """What the layer must compute from its current weights (nothing kept)."""
    return F.conv2d(x, layer.weight.data, layer.bias.data, padding=1)


def test_eval_conv_keeps_transform_and_matches_functional(rng, transform_count, monkeypatch):
    layer, x = _eval_conv(rng)
    y1 = layer(x)
    y2 = layer(x)
    assert len(transform_count) == 1  # the second call reused the kept transform
    np.testing.assert_array_equal(y1, y2)
    assert_close(y1, R.conv2d(*as_float64(x, layer.weight.data, layer.bias.data), padding=1),
                 np.float32, "kept")
    layer.train()
    any_tile_count(monkeypatch)  # Winograd at 16 tiles without kept transforms too
    layer(x)
    layer(x)
    assert len(transform_count) == 3  # nothing is kept in training mode


@pytest.mark.parametrize("opt", [SGD, Adam])
def test_optimizer_step_invalidates(rng, opt, transform_count):
    layer, x = _eval_conv(rng)
    before = layer(x)
    layer.weight.grad[...] = rng.standard_normal(layer.weight.shape)
    opt(layer.parameters(), lr=0.1).step()
    after = layer(x)
    assert len(transform_count) == 2
    assert not np.allclose(after, before)
    assert_close(after, _fresh(layer, x), np.float32, "after step")


@pytest.mark.parametrize("how", ["assign", "augmented", "load_state_dict", "reset",
                                 "mark_changed", "eval_again", "astype"])
def test_weight_changes_invalidate(rng, how):
    layer, x = _eval_conv(rng)
    layer(x)
    new = rng.standard_normal(layer.weight.shape).astype(np.float32)
    if how == "assign":
        layer.weight.data = new
    elif how == "augmented":
        layer.weight.data *= 2
    elif how == "load_state_dict":
        layer.load_state_dict({"weight": new, "bias": layer.bias.data})
    elif how == "reset":
        layer.reset_parameters(np.random.default_rng(5))
    elif how == "mark_changed":
        layer.weight.data[...] = new  # a write through a view: version cannot see it
        layer.weight.mark_changed()
    elif how == "eval_again":
        layer.weight.data[...] = new
        layer.eval()
    elif how == "astype":
        layer.astype(np.float64)
        x = x.astype(np.float64)
    y = layer(x)
    assert_close(y, _fresh(layer, x), y.dtype, how)


def test_replaced_parameter_invalidates(rng):
    """A new Parameter never reuses an old version number."""
    layer, x = _eval_conv(rng)
    layer(x)
    old = layer.weight
    layer.weight = cnncore.layers.base.Parameter(old.data * -1, "weight")
    layer._params["weight"] = layer.weight
    assert layer.weight.version != old.version
    assert_close(layer(x), _fresh(layer, x), np.float32, "replaced")


def test_eval_backward_uses_kept_transforms(rng, transform_count, monkeypatch):
    """Input gradients in eval mode (saliency maps) reuse the kept transforms too and stay
    right after a step."""
    any_tile_count(monkeypatch)
    layer, x = _eval_conv(rng, np.float64, c=32, h=10)
    for step in range(2):
        y = layer(x)
        gy = rng.standard_normal(y.shape)
        gx = layer.backward(gy)
        ex, _, _ = R.conv2d_backward(gy, x, layer.weight.data, padding=1)
        assert_close(gx, ex, np.float64, f"grad_x {step}")
        layer.weight.data -= 0.5 * layer.weight.grad
        layer.zero_grad()
    assert len(transform_count) == 2


def test_kept_transforms_in_a_model(rng, transform_count):
    """A whole eval-mode network: the second call transforms nothing; a training step in
    between makes it transform again and agree with a fresh model."""
    from cnncore.layers import ReLU, Sequential
    model = Sequential(Conv2d(32, 32, 3, padding=1, rng=rng), ReLU(),
                       Conv2d(32, 32, 3, padding=1, rng=rng)).eval()
    x = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    model(x)
    assert len(transform_count) == 2
    model(x)
    assert len(transform_count) == 2
    model.train()
    opt = SGD(model.parameters(), lr=0.05)
    out = model(x)
    model.backward(np.ones_like(out))
    opt.step()
    model.eval()
    fresh = Sequential(Conv2d(32, 32, 3, padding=1), ReLU(), Conv2d(32, 32, 3, padding=1))
    fresh.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(model(x), fresh.eval()(x))


# (C_in, C_out, H = W) -> forward and backward: few output channels take Winograd with
# enough input channels on a large enough map (planner._WINOGRAD_FEW_OUT_RULES).
FEW_OUT_CASES = [
    (48, 12, 32, "winograd"),   # DenseNet-121 bottleneck, first block
    (48, 12, 16, "winograd"),   # second block
    (48, 12, 8, "im2col"),      # third block: 16 tiles per sample
    (32, 12, 32, "winograd"),
    (32, 12, 16, "im2col"),     # 32 inputs need 256 tiles
    (24, 12, 32, "winograd"),
    (16, 12, 32, "im2col"),     # too few inputs
    (48, 4, 32, "im2col"),      # too few outputs
    (48, 24, 16, "winograd"),   # backward's minimum is 32 channels: the rule applies there
]


@pytest.mark.parametrize("c_in,c_out,h,expected", FEW_OUT_CASES)
def test_planner_few_output_channels(c_in, c_out, h, expected, monkeypatch):
    monkeypatch.setattr(F.planner._blas, "PACKED", False)  # BLAS products everywhere
    geo = _conv_geometry("test", (64, c_in, h, h), (c_out, c_in, 3, 3), 1, 1, 1, 1)
    assert F.planner.conv_algorithm(geo, c_in, c_out, 3, 3, n=64) == expected
    assert F.planner.conv_algorithm(geo, c_in, c_out, 3, 3, backward=True, n=64) == expected


@pytest.mark.parametrize("c_in,c_out,h,forward", [
    (48, 12, 32, "winograd"),
    (48, 12, 16, "im2col"),   # im2col's packed GEMM beats Winograd here (forward only)
    (64, 12, 16, "im2col"),
    (24, 12, 32, "winograd"),
])
def test_planner_few_output_channels_with_the_packed_gemm(c_in, c_out, h, forward,
                                                          monkeypatch):
    monkeypatch.setattr(F.planner._blas, "PACKED", True)
    geo = _conv_geometry("test", (64, c_in, h, h), (c_out, c_in, 3, 3), 1, 1, 1, 1)
    assert F.planner.conv_algorithm(geo, c_in, c_out, 3, 3, n=64) == forward
    assert F.planner.conv_algorithm(geo, c_in, c_out, 3, 3, backward=True, n=64) == "winograd"


@pytest.mark.parametrize("dtype", DTYPES)
def test_few_output_channels_match_reference(dtype, rng, monkeypatch):
    """The planner's own thresholds (not lowered as by winograd_calls) pick Winograd."""
    calls = []
    original = F.conv._winograd_conv
    monkeypatch.setattr(F.conv, "_winograd_conv",
                        lambda *a, **k: calls.append(a[1].shape) or original(*a, **k))
    x, w, b = make_conv2d_inputs(_cfg(2, 48, 12, 32, 32, 3, padding=1), dtype, rng)
    y = F.conv2d(x, w, b, padding=1, n_threads=2)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, padding=1, n_threads=2)
    assert calls == [(12, 48, 3, 3), (48, 12, 3, 3)]  # forward; input gradient
    assert_close(y, R.conv2d(*as_float64(x, w, b), padding=1), dtype, "conv2d")
    ex, ew, eb = R.conv2d_backward(*as_float64(gy, x, w), padding=1)
    assert_close(gx, ex, dtype, "grad_x")
    assert_close(gw, ew, dtype, "grad_weight")
    assert_close(gb, eb, dtype, "grad_bias")

"""Argument checking at the Python boundary: every bad call raises ValueError (shapes, values)
or TypeError (dtypes, argument types) with a message that names the function and the shapes
or dtypes involved; non-contiguous and integer inputs are accepted as documented."""

import numpy as np
import pytest

from cnncore import functional as F
from cnncore import reference as R

from _gradcheck import as_float64, assert_close


def z(*shape, dtype=np.float64):
    return np.zeros(shape, dtype=dtype)


def case(id_, fn, exc, *fragments, any_of=()):
    """``fn()`` must raise ``exc``; the message must contain every fragment and, if given,
    at least one of ``any_of``."""
    return pytest.param(fn, exc, fragments, any_of, id=id_)


def s(shape):
    return str(tuple(shape))


X, W = z(2, 3, 5, 5), z(4, 3, 3, 3)  # conv2d output (2, 4, 3, 3)
X1, W1 = z(2, 3, 8), z(4, 3, 3)      # conv1d output (2, 4, 6)

SHAPE_ERRORS = [
    # ---- conv2d
    case("conv2d-x-3d", lambda: F.conv2d(z(3, 5, 5), W), ValueError, "conv2d", s((3, 5, 5))),
    case("conv2d-x-5d", lambda: F.conv2d(z(1, 2, 3, 5, 5), W), ValueError, "conv2d",
         s((1, 2, 3, 5, 5))),
    case("conv2d-weight-3d", lambda: F.conv2d(X, z(4, 3, 3)), ValueError, "conv2d", s((4, 3, 3))),
    case("conv2d-channel-mismatch", lambda: F.conv2d(X, z(4, 2, 3, 3)), ValueError, "conv2d",
         any_of=(s((2, 3, 5, 5)), s((4, 2, 3, 3)))),
    case("conv2d-channel-mismatch-groups", lambda: F.conv2d(z(2, 4, 5, 5), z(4, 4, 3, 3),
                                                            groups=2),
         ValueError, "conv2d", any_of=(s((2, 4, 5, 5)), s((4, 4, 3, 3)))),
    case("conv2d-c-out-not-divisible", lambda: F.conv2d(z(2, 4, 5, 5), z(3, 2, 3, 3), groups=2),
         ValueError, "conv2d"),
    case("conv2d-c-in-not-divisible", lambda: F.conv2d(z(2, 3, 5, 5), z(4, 1, 3, 3), groups=2),
         ValueError, "conv2d"),
    case("conv2d-groups-0", lambda: F.conv2d(X, W, groups=0), ValueError, "conv2d"),
    case("conv2d-groups-negative", lambda: F.conv2d(z(2, 4, 5, 5), z(4, 2, 3, 3), groups=-2),
         ValueError, "conv2d"),
    case("conv2d-bias-length", lambda: F.conv2d(X, W, z(5)), ValueError, "conv2d", s((5,))),
    case("conv2d-bias-2d", lambda: F.conv2d(X, W, z(4, 1)), ValueError, "conv2d", s((4, 1))),
    case("conv2d-kernel-larger-than-input", lambda: F.conv2d(z(2, 3, 2, 2), W), ValueError,
         "conv2d"),
    case("conv2d-kernel-larger-than-padded-input-w",
         lambda: F.conv2d(z(1, 3, 6, 2), W, padding=(0, 0)), ValueError, "conv2d"),
    case("conv2d-dilated-kernel-too-large", lambda: F.conv2d(X, W, dilation=3), ValueError,
         "conv2d"),
    case("conv2d-stride-0", lambda: F.conv2d(X, W, stride=0), ValueError, "conv2d"),
    case("conv2d-stride-negative", lambda: F.conv2d(X, W, stride=-1), ValueError, "conv2d"),
    case("conv2d-stride-pair-0", lambda: F.conv2d(X, W, stride=(1, 0)), ValueError, "conv2d"),
    case("conv2d-dilation-0", lambda: F.conv2d(X, W, dilation=0), ValueError, "conv2d"),
    case("conv2d-dilation-pair-negative", lambda: F.conv2d(X, W, dilation=(-1, 1)), ValueError,
         "conv2d"),
    case("conv2d-padding-negative", lambda: F.conv2d(X, W, padding=-1), ValueError, "conv2d"),
    case("conv2d-padding-pair-negative", lambda: F.conv2d(X, W, padding=(0, -1)), ValueError,
         "conv2d"),
    case("conv2d-padding-unknown-mode", lambda: F.conv2d(X, W, padding="bogus"), ValueError,
         "conv2d", "bogus"),
    case("conv2d-padding-same-even-kernel", lambda: F.conv2d(X, z(4, 3, 2, 2), padding="same"),
         ValueError, "conv2d"),
    case("conv2d-n-threads-0", lambda: F.conv2d(X, W, n_threads=0), ValueError, "conv2d"),
    # ---- conv2d_backward
    case("conv2d_backward-grad-out-shape", lambda: F.conv2d_backward(z(2, 4, 4, 4), X, W),
         ValueError, "conv2d_backward", s((2, 4, 4, 4)), s((2, 4, 3, 3))),
    case("conv2d_backward-grad-out-channels", lambda: F.conv2d_backward(z(2, 5, 3, 3), X, W),
         ValueError, "conv2d_backward", s((2, 5, 3, 3)), s((2, 4, 3, 3))),
    case("conv2d_backward-grad-out-3d", lambda: F.conv2d_backward(z(2, 4, 9), X, W), ValueError,
         "conv2d_backward", s((2, 4, 9))),
    case("conv2d_backward-channel-mismatch",
         lambda: F.conv2d_backward(z(2, 4, 3, 3), X, z(4, 2, 3, 3)), ValueError,
         "conv2d_backward"),
    case("conv2d_backward-x-3d", lambda: F.conv2d_backward(z(2, 4, 3, 3), z(3, 5, 5), W),
         ValueError, "conv2d_backward", s((3, 5, 5))),
    case("conv2d_backward-stride-0", lambda: F.conv2d_backward(z(2, 4, 3, 3), X, W, stride=0),
         ValueError, "conv2d_backward"),
    case("conv2d_backward-groups", lambda: F.conv2d_backward(z(2, 3, 3, 3), z(2, 4, 5, 5),
                                                             z(3, 2, 3, 3), groups=2),
         ValueError, "conv2d_backward"),
    # ---- conv1d
    case("conv1d-x-4d", lambda: F.conv1d(X, W1), ValueError, "conv1d", s((2, 3, 5, 5))),
    case("conv1d-x-2d", lambda: F.conv1d(z(3, 8), W1), ValueError, "conv1d", s((3, 8))),
    case("conv1d-weight-4d", lambda: F.conv1d(X1, W), ValueError, "conv1d", s((4, 3, 3, 3))),
    case("conv1d-channel-mismatch", lambda: F.conv1d(X1, z(4, 2, 3)), ValueError, "conv1d",
         any_of=(s((2, 3, 8)), s((4, 2, 3)))),
    case("conv1d-bias", lambda: F.conv1d(X1, W1, z(3)), ValueError, "conv1d", s((3,))),
    case("conv1d-kernel-too-large", lambda: F.conv1d(z(2, 3, 2), W1), ValueError, "conv1d"),
    case("conv1d-stride-0", lambda: F.conv1d(X1, W1, stride=0), ValueError, "conv1d"),
    case("conv1d-dilation-0", lambda: F.conv1d(X1, W1, dilation=0), ValueError, "conv1d"),
    case("conv1d-padding-negative", lambda: F.conv1d(X1, W1, padding=-2), ValueError, "conv1d"),
    case("conv1d-padding-unknown", lambda: F.conv1d(X1, W1, padding="circular"), ValueError,
         "conv1d"),
    case("conv1d-same-even", lambda: F.conv1d(X1, z(4, 3, 4), padding="same"), ValueError,
         "conv1d"),
    case("conv1d-groups", lambda: F.conv1d(z(2, 4, 8), z(3, 2, 3), groups=2), ValueError,
         "conv1d"),
    case("conv1d_backward-grad-out", lambda: F.conv1d_backward(z(2, 4, 7), X1, W1), ValueError,
         "conv1d_backward", s((2, 4, 7)), s((2, 4, 6))),
    # ---- pooling
    case("max_pool2d-x-3d", lambda: F.max_pool2d(z(3, 4, 4), 2), ValueError, "max_pool2d",
         s((3, 4, 4))),
    case("max_pool2d-padding-too-large", lambda: F.max_pool2d(z(1, 1, 6, 6), 3, padding=2),
         ValueError, "max_pool2d"),
    case("max_pool2d-padding-too-large-k2", lambda: F.max_pool2d(z(1, 1, 6, 6), 2, padding=2),
         ValueError, "max_pool2d"),
    case("max_pool2d-padding-pair-too-large",
         lambda: F.max_pool2d(z(1, 1, 6, 6), (4, 2), padding=(2, 2)), ValueError, "max_pool2d"),
    case("max_pool2d-padding-negative", lambda: F.max_pool2d(z(1, 1, 6, 6), 3, padding=-1),
         ValueError, "max_pool2d"),
    case("max_pool2d-kernel-0", lambda: F.max_pool2d(z(1, 1, 6, 6), 0), ValueError,
         "max_pool2d"),
    case("max_pool2d-stride-0", lambda: F.max_pool2d(z(1, 1, 6, 6), 2, stride=0), ValueError,
         "max_pool2d"),
    case("max_pool2d-kernel-too-large", lambda: F.max_pool2d(z(1, 1, 2, 5), 3), ValueError,
         "max_pool2d"),
    case("max_pool2d_backward-grad-out",
         lambda: F.max_pool2d_backward(z(2, 3, 3, 3), z(2, 3, 4, 4), 2), ValueError,
         "max_pool2d_backward", s((2, 3, 3, 3)), s((2, 3, 2, 2))),
    case("avg_pool2d-x-5d", lambda: F.avg_pool2d(z(1, 1, 1, 4, 4), 2), ValueError, "avg_pool2d",
         s((1, 1, 1, 4, 4))),
    case("avg_pool2d-padding-too-large", lambda: F.avg_pool2d(z(1, 1, 6, 6), 3, padding=2),
         ValueError, "avg_pool2d"),
    case("avg_pool2d-kernel-0", lambda: F.avg_pool2d(z(1, 1, 6, 6), 0), ValueError,
         "avg_pool2d"),
    case("avg_pool2d-stride-negative", lambda: F.avg_pool2d(z(1, 1, 6, 6), 2, stride=-2),
         ValueError, "avg_pool2d"),
    case("avg_pool2d-kernel-too-large", lambda: F.avg_pool2d(z(1, 1, 5, 2), (2, 3)), ValueError,
         "avg_pool2d"),
    case("avg_pool2d_backward-grad-out",
         lambda: F.avg_pool2d_backward(z(2, 3, 2, 3), z(2, 3, 4, 4), 2), ValueError,
         "avg_pool2d_backward", s((2, 3, 2, 3)), s((2, 3, 2, 2))),
    case("global_avg_pool2d-x-3d", lambda: F.global_avg_pool2d(z(3, 4, 4)), ValueError,
         "global_avg_pool2d", s((3, 4, 4))),
    case("global_avg_pool2d_backward-grad-out",
         lambda: F.global_avg_pool2d_backward(z(2, 4), X), ValueError,
         "global_avg_pool2d_backward", s((2, 4)), s((2, 3))),
    case("global_avg_pool2d_backward-grad-out-4d",
         lambda: F.global_avg_pool2d_backward(z(2, 3, 1, 1), X), ValueError,
         "global_avg_pool2d_backward", s((2, 3, 1, 1))),
    # ---- activations
    *[case(f"{name}_backward-grad-out", (lambda name=name: getattr(F, name + "_backward")(
        z(3, 4), z(4, 3))), ValueError, name + "_backward", s((3, 4)), s((4, 3)))
      for name in ("relu", "leaky_relu", "sigmoid", "tanh")],
    # ---- linear
    case("linear-x-1d", lambda: F.linear(z(5), z(3, 5)), ValueError, "linear", s((5,))),
    case("linear-x-3d", lambda: F.linear(z(2, 2, 5), z(3, 5)), ValueError, "linear",
         s((2, 2, 5))),
    case("linear-weight-1d", lambda: F.linear(z(2, 5), z(5)), ValueError, "linear", s((5,))),
    case("linear-in-features-mismatch", lambda: F.linear(z(2, 5), z(3, 4)), ValueError,
         "linear", any_of=(s((2, 5)), s((3, 4)))),
    case("linear-bias", lambda: F.linear(z(2, 5), z(3, 5), z(4)), ValueError, "linear",
         s((4,))),
    case("linear_backward-grad-out", lambda: F.linear_backward(z(2, 4), z(2, 5), z(3, 5)),
         ValueError, "linear_backward", s((2, 4)), s((2, 3))),
    case("linear_backward-mismatch", lambda: F.linear_backward(z(2, 3), z(2, 5), z(3, 4)),
         ValueError, "linear_backward"),
    # ---- losses
    case("softmax_cross_entropy-logits-1d",
         lambda: F.softmax_cross_entropy(z(5), np.array([0])), ValueError,
         "softmax_cross_entropy", s((5,))),
    case("softmax_cross_entropy-labels-length",
         lambda: F.softmax_cross_entropy(z(4, 5), np.array([0, 1, 2])), ValueError,
         "softmax_cross_entropy", s((3,))),
    case("softmax_cross_entropy-one-hot-shape",
         lambda: F.softmax_cross_entropy(z(4, 5), z(4, 6)), ValueError,
         "softmax_cross_entropy", s((4, 6))),
    case("softmax_cross_entropy-label-too-large",
         lambda: F.softmax_cross_entropy(z(2, 5), np.array([0, 5])), ValueError,
         "softmax_cross_entropy"),
    case("softmax_cross_entropy-label-negative",
         lambda: F.softmax_cross_entropy(z(2, 5), np.array([-1, 0])), ValueError,
         "softmax_cross_entropy"),
    case("softmax_cross_entropy-label-far-out",
         lambda: F.softmax_cross_entropy(z(3, 5), np.array([0, 1, 10 ** 9])), ValueError,
         "softmax_cross_entropy"),
    case("mse_loss-shape-mismatch", lambda: F.mse_loss(z(3, 4), z(4, 3)), ValueError,
         "mse_loss", s((3, 4)), s((4, 3))),
    case("mse_loss-broadcastable-is-still-a-mismatch", lambda: F.mse_loss(z(3, 4), z(3, 1)),
         ValueError, "mse_loss", s((3, 1))),
]

ARG_TYPE_ERRORS = [
    case("conv2d-stride-float", lambda: F.conv2d(X, W, stride=1.5), TypeError, "conv2d"),
    case("conv2d-stride-str", lambda: F.conv2d(X, W, stride="2"), TypeError, "conv2d"),
    case("conv2d-stride-triple", lambda: F.conv2d(X, W, stride=(1, 1, 1)), TypeError, "conv2d"),
    case("conv2d-dilation-float", lambda: F.conv2d(X, W, dilation=2.0), TypeError, "conv2d"),
    case("conv2d-padding-float", lambda: F.conv2d(X, W, padding=1.0), TypeError, "conv2d"),
    case("conv2d-groups-float", lambda: F.conv2d(X, W, groups=1.5), TypeError, "conv2d"),
    case("conv2d_backward-stride-float",
         lambda: F.conv2d_backward(z(2, 4, 3, 3), X, W, stride=1.5), TypeError,
         "conv2d_backward"),
    case("conv1d-stride-float", lambda: F.conv1d(X1, W1, stride=0.5), TypeError, "conv1d"),
    case("max_pool2d-kernel-float", lambda: F.max_pool2d(z(1, 1, 4, 4), 2.5), TypeError,
         "max_pool2d"),
    case("avg_pool2d-stride-float", lambda: F.avg_pool2d(z(1, 1, 4, 4), 2, stride=1.5),
         TypeError, "avg_pool2d"),
    case("max_pool2d-padding-str", lambda: F.max_pool2d(z(1, 1, 4, 4), 2, padding="same"),
         (TypeError, ValueError), "max_pool2d"),
]

# (float16 and big-endian floats are converted, as NumPy would: tests/test_properties.py)
obj, c64, c128 = object, np.complex64, np.complex128
DTYPE_ERRORS = [
    case("conv2d-object", lambda: F.conv2d(z(2, 3, 5, 5, dtype=obj), z(4, 3, 3, 3, dtype=obj)),
         TypeError, "conv2d", "object"),
    case("conv2d-mixed", lambda: F.conv2d(z(2, 3, 5, 5, dtype=np.float32), W), TypeError,
         "conv2d", "float32", "float64"),
    case("conv2d-mixed-bias", lambda: F.conv2d(X, W, z(4, dtype=np.float32)), TypeError,
         "conv2d", "float32", "float64"),
    case("conv2d-complex", lambda: F.conv2d(z(2, 3, 5, 5, dtype=c128), W), TypeError,
         "conv2d", "complex128"),
    case("conv2d_backward-mixed",
         lambda: F.conv2d_backward(z(2, 4, 3, 3, dtype=np.float32), X, W), TypeError,
         "conv2d_backward", "float32", "float64"),
    case("conv1d-object", lambda: F.conv1d(z(2, 3, 8, dtype=obj), W1), TypeError, "conv1d",
         "object"),
    case("conv1d_backward-mixed",
         lambda: F.conv1d_backward(z(2, 4, 6), z(2, 3, 8, dtype=np.float32),
                                   z(4, 3, 3, dtype=np.float32)),
         TypeError, "conv1d_backward", "float32", "float64"),
    case("max_pool2d-object", lambda: F.max_pool2d(z(1, 1, 4, 4, dtype=obj), 2), TypeError,
         "max_pool2d", "object"),
    case("max_pool2d_backward-mixed",
         lambda: F.max_pool2d_backward(z(1, 1, 2, 2, dtype=np.float32), z(1, 1, 4, 4), 2),
         TypeError, "max_pool2d_backward", "float32", "float64"),
    case("avg_pool2d-complex", lambda: F.avg_pool2d(z(1, 1, 4, 4, dtype=c128), 2), TypeError,
         "avg_pool2d", "complex128"),
    case("avg_pool2d_backward-mixed",
         lambda: F.avg_pool2d_backward(z(1, 1, 2, 2), z(1, 1, 4, 4, dtype=np.float32), 2),
         TypeError, "avg_pool2d_backward", "float32", "float64"),
    case("global_avg_pool2d-complex64", lambda: F.global_avg_pool2d(z(1, 1, 4, 4, dtype=c64)),
         TypeError, "global_avg_pool2d", "complex64"),
    case("global_avg_pool2d_backward-mixed",
         lambda: F.global_avg_pool2d_backward(z(1, 1, dtype=np.float32), z(1, 1, 4, 4)),
         TypeError, "global_avg_pool2d_backward", "float32", "float64"),
    case("relu-complex64", lambda: F.relu(z(3, dtype=c64)), TypeError, "relu", "complex64"),
    case("relu-complex", lambda: F.relu(z(3, dtype=c128)), TypeError, "relu", "complex128"),
    case("relu-object", lambda: F.relu(np.array([1.0, None, 2.0], dtype=object)), TypeError,
         "relu", "object"),
    case("relu-str", lambda: F.relu(np.array(["a", "b"])), TypeError, "relu"),
    case("sigmoid-complex64", lambda: F.sigmoid(z(3, dtype=c64)), TypeError, "sigmoid",
         "complex64"),
    case("tanh-object", lambda: F.tanh(np.array([1.0, 2.0], dtype=object)), TypeError, "tanh"),
    case("leaky_relu-complex", lambda: F.leaky_relu(z(3, dtype=np.complex64)), TypeError,
         "leaky_relu", "complex64"),
    case("relu_backward-mixed", lambda: F.relu_backward(z(3, dtype=np.float32), z(3)),
         TypeError, "relu_backward", "float32", "float64"),
    case("sigmoid_backward-mixed", lambda: F.sigmoid_backward(z(3), z(3, dtype=np.float32)),
         TypeError, "sigmoid_backward", "float32", "float64"),
    case("tanh_backward-complex64", lambda: F.tanh_backward(z(3, dtype=c64), z(3, dtype=c64)),
         TypeError, "tanh_backward", "complex64"),
    case("leaky_relu_backward-mixed",
         lambda: F.leaky_relu_backward(z(3), z(3, dtype=np.float32)), TypeError,
         "leaky_relu_backward", "float32", "float64"),
    case("linear-mixed", lambda: F.linear(z(2, 5, dtype=np.float32), z(3, 5)), TypeError,
         "linear", "float32", "float64"),
    case("linear-complex64", lambda: F.linear(z(2, 5, dtype=c64), z(3, 5, dtype=c64)), TypeError,
         "linear", "complex64"),
    case("linear_backward-mixed",
         lambda: F.linear_backward(z(2, 3), z(2, 5, dtype=np.float32), z(3, 5, dtype=np.float32)),
         TypeError, "linear_backward", "float32", "float64"),
    case("softmax-complex64", lambda: F.softmax(z(2, 3, dtype=c64)), TypeError, "softmax",
         "complex64"),
    case("softmax_cross_entropy-complex64",
         lambda: F.softmax_cross_entropy(z(2, 3, dtype=c64), np.array([0, 1])), TypeError,
         "softmax_cross_entropy", "complex64"),
    case("softmax_cross_entropy-mixed-one-hot",
         lambda: F.softmax_cross_entropy(z(2, 3, dtype=np.float32), np.eye(3)[:2]), TypeError,
         "softmax_cross_entropy", "float32", "float64"),
    case("mse_loss-mixed", lambda: F.mse_loss(z(2, 3, dtype=np.float32), z(2, 3)), TypeError,
         "mse_loss", "float32", "float64"),
    case("mse_loss-complex", lambda: F.mse_loss(z(2, 3, dtype=c128), z(2, 3, dtype=c128)),
         TypeError, "mse_loss", "complex128"),
]


@pytest.mark.parametrize("fn,exc,fragments,any_of", SHAPE_ERRORS + ARG_TYPE_ERRORS + DTYPE_ERRORS)
def test_bad_call_raises(fn, exc, fragments, any_of):
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in message {message!r}"
    if any_of:
        assert any(f in message for f in any_of), f"none of {any_of} in message {message!r}"


def test_type_error_for_dtype_is_not_a_value_error():
    """Dtype problems are TypeErrors, not ValueErrors (the two must be distinguishable)."""
    with pytest.raises(TypeError) as info:
        F.relu(z(2, dtype=np.complex64))
    assert not isinstance(info.value, ValueError)
    with pytest.raises(ValueError) as info:
        F.relu_backward(z(2), z(3))
    assert not isinstance(info.value, TypeError)


# ----------------------------------------------------------------------------- integer inputs

def test_int_relu_is_float32():
    y = F.relu(np.array([-1, 2]))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.array([0.0, 2.0], dtype=np.float32))


def test_bool_relu_is_float32():
    y = F.relu(np.array([True, False]))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [1.0, 0.0])


@pytest.mark.parametrize("int_dtype", [np.int8, np.int32, np.int64, np.uint16])
def test_int_activations(int_dtype):
    x = np.array([[0, 1], [2, 3]], dtype=int_dtype)
    for name in ("relu", "leaky_relu", "sigmoid", "tanh"):
        y = getattr(F, name)(x)
        assert y.dtype == np.float32, name
        assert_close(y, getattr(R, name)(x.astype(np.float64)), np.float32, name)


def test_int_conv2d_with_float64_weight_is_float64(rng):
    x = rng.integers(-5, 6, size=(2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 2))
    y = F.conv2d(x, w, padding=1)
    assert y.dtype == np.float64
    assert_close(y, R.conv2d(x.astype(np.float64), w, padding=1), np.float64, "conv2d")


def test_int_weight_with_float32_input_is_float32(rng):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = rng.integers(-2, 3, size=(4, 3, 3, 3)).astype(np.int16)
    b = np.array([1, 2, 3, 4])
    y = F.conv2d(x, w, b)
    assert y.dtype == np.float32
    assert_close(y, R.conv2d(*as_float64(x, w, b)), np.float32, "conv2d")


def test_int_conv2d_with_int_weight_is_float32(rng):
    x = rng.integers(0, 4, size=(1, 2, 4, 4))
    w = rng.integers(-1, 2, size=(3, 2, 2, 2))
    y = F.conv2d(x, w)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, R.conv2d(x.astype(np.float64), w.astype(np.float64)))


def _missing_grad_out_calls():
    x = np.ones((2, 3, 4, 4), np.float32)
    w = np.ones((2, 3, 3, 3), np.float32)
    idx = F.max_pool2d(x, 2, return_indices=True)[1]
    return {
        "conv2d_backward": lambda: F.conv2d_backward(None, x, w),
        "conv1d_backward": lambda: F.conv1d_backward(None, x[:, :, 0], w[:, :, 0]),
        "max_pool2d_backward": lambda: F.max_pool2d_backward(None, x, 2, indices=idx),
        "avg_pool2d_backward": lambda: F.avg_pool2d_backward(None, x, 2),
        "global_avg_pool2d_backward": lambda: F.global_avg_pool2d_backward(None, x),
        "relu_backward": lambda: F.relu_backward(None, x),
        "leaky_relu_backward": lambda: F.leaky_relu_backward(None, x),
        "sigmoid_backward": lambda: F.sigmoid_backward(None, x),
        "tanh_backward": lambda: F.tanh_backward(None, x),
        "linear_backward": lambda: F.linear_backward(None, x[:, :, 0, 0], w[:, :, 0, 0]),
    }


@pytest.mark.parametrize("name", list(_missing_grad_out_calls()))
def test_backward_without_grad_out_is_a_named_type_error(name):
    with pytest.raises(TypeError, match=f"^{name}: grad_out is required"):
        _missing_grad_out_calls()[name]()


def test_int_grad_out_in_backward(rng):
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    gy = rng.integers(-3, 4, size=(2, 4, 3, 3))
    got = F.conv2d_backward(gy, x, w)
    for a, e in zip(got, R.conv2d_backward(gy.astype(np.float64), x, w)):
        assert_close(a, e, np.float64, "conv2d_backward")


def test_int_pool_and_dense(rng):
    x = rng.integers(-9, 10, size=(2, 3, 4, 4))
    y = F.max_pool2d(x, 2)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, R.max_pool2d(x.astype(np.float64), 2))
    y = F.avg_pool2d(x, 2)
    assert y.dtype == np.float32
    assert_close(y, R.avg_pool2d(x.astype(np.float64), 2), np.float32, "avg_pool2d")
    g = F.global_avg_pool2d(x)
    assert g.dtype == np.float32
    assert_close(g, x.mean(axis=(2, 3)), np.float32, "global_avg_pool2d")
    xl = rng.integers(-3, 4, size=(5, 4))
    wl = rng.standard_normal((2, 4))
    yl = F.linear(xl, wl)
    assert yl.dtype == np.float64
    assert_close(yl, xl @ wl.T, np.float64, "linear")
    loss, grad = F.mse_loss(np.array([[1, 2], [3, 4]]), np.array([[0.5, 2.0], [3.0, 3.0]]))
    assert grad.dtype == np.float64
    assert float(loss) == pytest.approx((0.25 + 1) / 4, rel=1e-12)


# ----------------------------------------------------------------------------- non-contiguous inputs

def noncontig(a, how, g):
    """A view with the values of ``a`` that is not C-contiguous."""
    if how == "transposed":
        return np.ascontiguousarray(a.T).T
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided":
        big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
        big[tuple(slice(None, None, 2) for _ in a.shape)] = a
        return big[tuple(slice(None, None, 2) for _ in a.shape)]
    if how == "reversed":
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    raise AssertionError(how)


HOWS = ["transposed", "strided", "reversed", "fortran"]


def _check_noncontig(fn_f, fn_r, arrays, how, g, dtype=np.float64):
    views = [noncontig(a, how, g) for a in arrays]
    for v, a in zip(views, arrays):
        if a.ndim > 1 or how in ("strided", "reversed"):
            assert not v.flags.c_contiguous
        np.testing.assert_array_equal(v, a)
    before = [v.copy() for v in views]
    got = fn_f(*views)
    expected = fn_r(*arrays)
    if not isinstance(got, tuple):
        got, expected = (got,), (expected,)
    for a, e in zip(got, expected):
        if np.ndim(e) == 0:
            assert float(a) == pytest.approx(float(e), rel=1e-10)
        else:
            assert_close(a, e, dtype, "non-contiguous")
    for v, b in zip(views, before):
        np.testing.assert_array_equal(v, b)  # inputs untouched


@pytest.mark.parametrize("how", HOWS)
def test_noncontiguous_conv(how, rng):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    kw = dict(stride=(2, 1), padding=1, groups=2)
    _check_noncontig(lambda *a: F.conv2d(*a, **kw), lambda *a: R.conv2d(*a, **kw),
                     [x, w, b], how, rng)
    gy = rng.standard_normal(R.conv2d(x, w, **kw).shape)
    _check_noncontig(lambda *a: F.conv2d_backward(*a, **kw),
                     lambda *a: R.conv2d_backward(*a, **kw), [gy, x, w], how, rng)
    x1, w1 = x[:, :, 0], w[:, :, 0]  # (2, 4, 6) and (6, 2, 2)
    _check_noncontig(lambda *a: F.conv1d(*a, padding=1, groups=2),
                     lambda *a: R.conv1d(*a, padding=1, groups=2), [x1, w1, b], how, rng)
    gy1 = rng.standard_normal((2, 6, 5))
    _check_noncontig(lambda *a: F.conv1d_backward(*a, groups=2),
                     lambda *a: R.conv1d_backward(*a, groups=2), [gy1, x1, w1], how, rng)


@pytest.mark.parametrize("how", HOWS)
def test_noncontiguous_pool(how, rng):
    x = ((rng.permutation(2 * 3 * 7 * 6) - 100) / 4.0).reshape(2, 3, 7, 6)
    kw = dict(kernel_size=3, stride=2, padding=1)
    gy = rng.standard_normal(R.max_pool2d(x, **kw).shape)
    _check_noncontig(lambda a: F.max_pool2d(a, **kw), lambda a: R.max_pool2d(a, **kw), [x],
                     how, rng)
    _check_noncontig(lambda *a: F.max_pool2d_backward(*a, **kw),
                     lambda *a: R.max_pool2d_backward(*a, **kw), [gy, x], how, rng)
    for cip in (True, False):
        kwa = dict(kw, count_include_pad=cip)
        _check_noncontig(lambda a: F.avg_pool2d(a, **kwa), lambda a: R.avg_pool2d(a, **kwa),
                         [x], how, rng)
        _check_noncontig(lambda *a: F.avg_pool2d_backward(*a, **kwa),
                         lambda *a: R.avg_pool2d_backward(*a, **kwa), [gy, x], how, rng)
    _check_noncontig(F.global_avg_pool2d, R.global_avg_pool2d, [x], how, rng)
    _check_noncontig(F.global_avg_pool2d_backward, R.global_avg_pool2d_backward,
                     [rng.standard_normal((2, 3)), x], how, rng)


@pytest.mark.parametrize("how", HOWS)
def test_noncontiguous_activations_dense_losses(how, rng):
    x = 3 * rng.standard_normal((4, 5, 3))
    gy = rng.standard_normal(x.shape)
    for name in ("relu", "leaky_relu", "sigmoid", "tanh"):
        _check_noncontig(getattr(F, name), getattr(R, name), [x], how, rng)
        _check_noncontig(getattr(F, name + "_backward"), getattr(R, name + "_backward"),
                         [gy, x], how, rng)
    xl, wl, bl = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    _check_noncontig(F.linear, R.linear, [xl, wl, bl], how, rng)
    _check_noncontig(F.linear_backward, R.linear_backward,
                     [rng.standard_normal((5, 3)), xl, wl], how, rng)
    _check_noncontig(F.softmax, R.softmax, [xl], how, rng)
    _check_noncontig(lambda a: F.softmax(a, axis=0), lambda a: R.softmax(a, axis=0), [xl], how,
                     rng)
    t = rng.random((5, 4))
    t /= t.sum(axis=1, keepdims=True)
    _check_noncontig(F.softmax_cross_entropy, R.softmax_cross_entropy, [xl, t], how, rng)
    _check_noncontig(F.mse_loss, R.mse_loss, [xl, t], how, rng)


def test_noncontiguous_int_labels(rng):
    logits = rng.standard_normal((5, 4))
    labels = np.array([[0, 9], [3, 9], [1, 9], [2, 9], [3, 9]])[:, 0]  # strided view
    assert not labels.flags.c_contiguous
    loss, grad = F.softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = R.softmax_cross_entropy(logits, np.ascontiguousarray(labels))
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-10)
    assert_close(grad, ref_grad, np.float64, "grad_logits")


def test_float32_views_of_float64_are_not_confused(rng):
    """A float32 strided slice keeps its dtype (no silent promotion)."""
    x = rng.standard_normal((4, 6)).astype(np.float32)[:, ::2]
    y = F.relu(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.maximum(x, 0))

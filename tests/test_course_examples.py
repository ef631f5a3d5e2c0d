"""The course's worked examples as fixed vectors (expected values worked out by hand)."""

import numpy as np
import pytest

from cnncore import functional as F

DTYPES = [np.float32, np.float64]

X4 = [[2, 5, 0, 1],
      [6, 7, 1, 2],
      [3, 0, 4, 0],
      [3, 9, 7, 4]]
X5 = [[1, 3, 0, 2, 4],
      [4, 7, 4, 1, 0],
      [4, 6, 0, 0, 6],
      [3, 2, 8, 1, 2],
      [3, 5, 0, 7, 3]]
K_A = [[1, 0, 1],
       [-1, 1, 0],
       [0, 1, -1]]
K_B = [[-1, 1, 0],
       [0, 1, -1],
       [1, 0, 1]]
P4 = [[1, 3, 0, 3],
      [2, 2, 4, 1],
      [4, 2, 0, 0],
      [3, 3, 3, 1]]


def img(a, dtype):
    a = np.asarray(a, dtype=dtype)
    return a.reshape((1, 1) + a.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x,k,stride,expected", [
    pytest.param(X4, K_A, 1, [[-1, 4], [6, 16]], id="4x4-kernel-A"),
    pytest.param(X4, K_B, 1, [[16, -6], [7, 11]], id="4x4-kernel-B"),
    pytest.param(X5, K_A, 1, [[10, 2, -5], [4, 9, 3], [8, 5, 3]], id="5x5-stride-1"),
    pytest.param(X5, K_A, 2, [[10, -5], [8, 3]], id="5x5-stride-2"),
])
def test_conv2d_worked_examples(x, k, stride, expected, dtype):
    y = F.conv2d(img(x, dtype), img(k, dtype), stride=stride, padding=0)
    assert y.dtype == dtype
    assert y.shape == (1, 1) + np.shape(expected)
    np.testing.assert_array_equal(y[0, 0], np.array(expected, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_worked_example_with_bias_and_two_kernels(dtype):
    """Both kernels of the 4x4 example in one call, as two output channels, plus a bias."""
    w = np.stack([np.asarray(K_A, dtype=dtype), np.asarray(K_B, dtype=dtype)])[:, None]
    y = F.conv2d(img(X4, dtype), w, np.array([1, -1], dtype=dtype))
    np.testing.assert_array_equal(y[0, 0], np.array([[0, 5], [7, 17]], dtype=dtype))
    np.testing.assert_array_equal(y[0, 1], np.array([[15, -7], [6, 10]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_worked_example(dtype):
    # the middle row of X5 against the middle row of K_A: [-1, 1, 0]
    y = F.conv1d(np.array([[[4, 7, 4, 1, 0]]], dtype=dtype),
                 np.array([[[-1, 1, 0]]], dtype=dtype))
    np.testing.assert_array_equal(y[0, 0], np.array([3, -3, -3], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_worked_example(dtype):
    x = img(P4, dtype)
    y = F.max_pool2d(x, 2, stride=2)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[0, 0], np.array([[3, 4], [4, 3]], dtype=dtype))
    np.testing.assert_array_equal(F.max_pool2d(x, 2)[0, 0], y[0, 0])  # stride=None -> 2
    gx = F.max_pool2d_backward(img([[1, 2], [3, 4]], dtype), x, 2, stride=2)
    np.testing.assert_array_equal(gx[0, 0], np.array([[0, 1, 0, 0],
                                                      [0, 0, 2, 0],
                                                      [3, 0, 0, 0],
                                                      [0, 0, 4, 0]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool_worked_example(dtype):
    x = img(P4, dtype)
    y = F.avg_pool2d(x, 2, stride=2)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[0, 0], np.array([[2, 2], [3, 1]], dtype=dtype))
    gx = F.avg_pool2d_backward(img([[1, 2], [3, 4]], dtype), x, 2, stride=2)
    np.testing.assert_array_equal(gx[0, 0], np.array([[0.25, 0.25, 0.5, 0.5],
                                                      [0.25, 0.25, 0.5, 0.5],
                                                      [0.75, 0.75, 1.0, 1.0],
                                                      [0.75, 0.75, 1.0, 1.0]], dtype=dtype))


@pytest.mark.parametrize("size,k,stride,padding,expected", [
    pytest.param(5, 3, 2, 1, 3, id="5x5-k3-s2-p1"),
    pytest.param(4, 3, 1, 1, 4, id="4x4-k3-p1"),
    pytest.param(5, 4, 1, 2, 6, id="5x5-k4-p2"),
    pytest.param(5, 3, 1, "full", 7, id="5x5-k3-full"),
    pytest.param(5, 3, 1, "same", 5, id="5x5-k3-same"),
    pytest.param(5, 5, 1, "same", 5, id="5x5-k5-same"),
    pytest.param(8, 5, 1, "same", 8, id="8x8-k5-same"),
    pytest.param(5, 3, 1, "valid", 3, id="5x5-k3-valid"),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_output_sizes(size, k, stride, padding, expected, dtype):
    x = np.ones((1, 1, size, size), dtype=dtype)
    w = np.ones((1, 1, k, k), dtype=dtype)
    y = F.conv2d(x, w, stride=stride, padding=padding)
    assert y.shape == (1, 1, expected, expected)
    y1 = F.conv1d(x[:, :, 0], w[:, :, 0], stride=stride, padding=padding)
    assert y1.shape == (1, 1, expected)


@pytest.mark.parametrize("size,k,stride,padding,expected", [
    (5, 3, 2, 1, 3), (4, 3, 1, 1, 4), (5, 4, 1, 2, 6)])
def test_pool_output_sizes(size, k, stride, padding, expected):
    x = np.ones((1, 1, size, size))
    assert F.max_pool2d(x, k, stride=stride, padding=padding).shape == (1, 1, expected, expected)
    assert F.avg_pool2d(x, k, stride=stride, padding=padding).shape == (1, 1, expected, expected)


def test_same_padding_keeps_size_and_centres_kernel():
    """'same' with k3 on the 5x5 example: a centred delta kernel reproduces the input."""
    delta = np.zeros((1, 1, 3, 3))
    delta[0, 0, 1, 1] = 1
    x = img(X5, np.float64)
    np.testing.assert_array_equal(F.conv2d(x, delta, padding="same"), x)
    # 'full' then crops back: the same delta puts the image in the centre of a 7x7 frame
    full = F.conv2d(x, delta, padding="full")
    np.testing.assert_array_equal(full[0, 0, 1:6, 1:6], x[0, 0])
    assert full[0, 0, 0].sum() == 0 and full[0, 0, :, 0].sum() == 0

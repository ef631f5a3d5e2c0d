"""Element-wise activations and their gradients."""

import numpy as np

from .._checks import check_given, check_shape, float_arrays
from .._kernels import activations as _act
from ._common import _threads

__all__ = ["relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid",
           "sigmoid_backward", "tanh", "tanh_backward"]


def _elementwise(where, kernel, x, *extra, grad_out=None, n_threads=None):
    if grad_out is None:
        x = float_arrays(where, x=x)
        inputs = (x.reshape(-1),)
    else:
        grad_out, x = float_arrays(where, grad_out=grad_out, x=x)
        check_shape(where, "grad_out", grad_out, x.shape)
        inputs = (grad_out.reshape(-1), x.reshape(-1))
    out = np.empty_like(x)
    threads = _threads(n_threads, where, x.size, nbytes=x.nbytes)
    kernel(*inputs, out.reshape(-1), *extra, threads)
    return out


def relu(x, n_threads=None):
    """``max(x, 0)``, element-wise, any shape."""
    return _elementwise("relu", _act.leaky_relu_forward, x, 0.0, True, n_threads=n_threads)


def relu_backward(grad_out, x, n_threads=None):
    """``grad_out`` where ``x > 0``, else 0."""
    check_given("relu_backward", "grad_out", grad_out)
    return _elementwise("relu_backward", _act.leaky_relu_backward, x, 0.0, True, grad_out=grad_out,
                        n_threads=n_threads)


def _slope(where, negative_slope):
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float, np.number)):
        raise TypeError(f"{where}: negative_slope must be a number, got {negative_slope!r}")
    return float(negative_slope)


def leaky_relu(x, negative_slope=0.01, n_threads=None):
    """``x`` where ``x > 0``, else ``negative_slope * x``."""
    where = "leaky_relu"
    return _elementwise(where, _act.leaky_relu_forward, x, _slope(where, negative_slope),
                        False, n_threads=n_threads)


def leaky_relu_backward(grad_out, x, negative_slope=0.01, n_threads=None):
    """``grad_out`` where ``x > 0``, else ``negative_slope * grad_out``."""
    where = "leaky_relu_backward"
    check_given(where, "grad_out", grad_out)
    return _elementwise(where, _act.leaky_relu_backward, x, _slope(where, negative_slope),
                        False, grad_out=grad_out, n_threads=n_threads)


def sigmoid(x, n_threads=None):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    return _elementwise("sigmoid", _act.sigmoid_forward, x, n_threads=n_threads)


def sigmoid_backward(grad_out, x, n_threads=None):
    """``grad_out * s * (1 - s)`` with ``s = sigmoid(x)``."""
    check_given("sigmoid_backward", "grad_out", grad_out)
    return _elementwise("sigmoid_backward", _act.sigmoid_backward, x, grad_out=grad_out,
                        n_threads=n_threads)


def tanh(x, n_threads=None):
    """Hyperbolic tangent, element-wise."""
    return _elementwise("tanh", _act.tanh_forward, x, n_threads=n_threads)


def tanh_backward(grad_out, x, n_threads=None):
    """``grad_out * (1 - tanh(x)^2)``."""
    check_given("tanh_backward", "grad_out", grad_out)
    return _elementwise("tanh_backward", _act.tanh_backward, x, grad_out=grad_out,
                        n_threads=n_threads)



"""Element-wise activations and Softmax. Each caches its input (Softmax: its output)."""

import numpy as np

from .. import functional as F
from .base import Layer

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax"]


class _Activation(Layer):
    _forward = None
    _backward = None

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        self._x = x
        return type(self)._forward(x)

    def backward(self, grad_out):
        if self._x is None:
            raise self._backward_before_forward()
        return type(self)._backward(grad_out, self._x)


class ReLU(_Activation):
    """``max(x, 0)``."""
    _forward = staticmethod(F.relu)
    _backward = staticmethod(F.relu_backward)


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``."""
    _forward = staticmethod(F.sigmoid)
    _backward = staticmethod(F.sigmoid_backward)


class Tanh(_Activation):
    """Hyperbolic tangent."""
    _forward = staticmethod(F.tanh)
    _backward = staticmethod(F.tanh_backward)


class LeakyReLU(Layer):
    """``x`` if ``x > 0`` else ``negative_slope * x``."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self._x = None

    def forward(self, x):
        self._x = x
        return F.leaky_relu(x, self.negative_slope)

    def backward(self, grad_out):
        if self._x is None:
            raise self._backward_before_forward()
        return F.leaky_relu_backward(grad_out, self._x, self.negative_slope)

    def get_config(self):
        return {"negative_slope": self.negative_slope}

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(Layer):
    """Softmax along ``axis`` (default: the class axis 1).

    Do not put it before :class:`cnncore.losses.SoftmaxCrossEntropy`, which takes logits;
    use it for models that must output probabilities.
    """

    def __init__(self, axis=1):
        super().__init__()
        self.axis = int(axis)
        self._y = None

    def forward(self, x):
        y = F.softmax(x, axis=self.axis)
        self._y = y
        return y

    def backward(self, grad_out):
        y = self._y
        if y is None:
            raise self._backward_before_forward()
        # dL/dx = y * (g - sum(g * y))
        dot = np.sum(grad_out * y, axis=self.axis, keepdims=True)
        return (grad_out - dot) * y

    def get_config(self):
        return {"axis": self.axis}

    def extra_repr(self):
        return f"axis={self.axis}"

"""Fully connected layer :class:`Linear` (alias :data:`Dense`), :class:`Flatten` and
:class:`Identity`."""

import numpy as np

from .. import functional as F
from .base import Layer, WeightedLayer, check_float_dtype, shape_str

__all__ = ["Linear", "Dense", "Flatten", "Identity"]


class Linear(WeightedLayer):
    """``y = x @ weight.T + bias`` for inputs ``(N, in_features)``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    weight_init, bias_init : str
        Initialiser names (default He uniform and zeros).
    dtype : float32 or float64
    rng : Generator, int seed or None

    Attributes
    ----------
    weight : Parameter ``(out_features, in_features)``
    bias : Parameter ``(out_features,)`` or None
    """

    def __init__(self, in_features, out_features, bias=True, weight_init="he_uniform",
                 bias_init="zeros", dtype=np.float32, rng=None):
        super().__init__()
        where = type(self).__name__
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._dtype = check_float_dtype(dtype, where)
        self._init_weight_bias((self.out_features, self.in_features), bias, weight_init,
                               bias_init, rng)

    def _check(self, shape, batch=True):
        ndim = 2 if batch else 1
        if len(shape) != ndim or shape[-1] != self.in_features:
            expected = f"(N, {self.in_features})" if batch else f"({self.in_features},)"
            hint = " (add a Flatten layer before it)" if len(shape) > ndim else ""
            raise ValueError(f"{self!r}: expected input {expected}, got {shape_str(shape)}{hint}")

    def output_shape(self, input_shape):
        self._check(tuple(input_shape), batch=False)
        return (self.out_features,)

    def forward(self, x):
        x = self._check_dtype(x)
        self._check(x.shape)
        self._x = x
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, grad_out):
        if self._x is None:
            raise self._backward_before_forward()
        # the kernel adds into the gradients: AlexNet's 9216 -> 4096 layer at batch 8 took
        # 0.66x the time of a fresh gradient (zeroed, then written) added by a NumPy pass
        return F.dense.linear_backward_into(grad_out, self._x, self.weight.data,
                                            self.weight.grad,
                                            None if self.bias is None else self.bias.grad)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "weight_init": self.weight_init,
                "bias_init": self.bias_init, "dtype": self._dtype.name}

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


#: Keras-style name of :class:`Linear`.
Dense = Linear


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)`` (a view when the input is contiguous)."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        if x.ndim < 2:
            raise ValueError(f"{self!r}: expected input (N, ...) with at least 2 dimensions, "
                             f"got {shape_str(x.shape)}")
        self._shape = x.shape
        return np.ascontiguousarray(x).reshape(x.shape[0], -1)

    def backward(self, grad_out):
        if self._shape is None:
            raise self._backward_before_forward()
        return np.ascontiguousarray(grad_out).reshape(self._shape)

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape, dtype=np.int64)),)


class Identity(Layer):
    """Returns its input (a shortcut branch for :class:`Concat`, a placeholder)."""

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out

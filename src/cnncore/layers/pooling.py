"""Pooling layers: :class:`MaxPool2d`, :class:`AvgPool2d`, :class:`GlobalAvgPool2d`."""

import numpy as np

from .._args import out_size, pair
from .. import functional as F
from .base import Layer, shape_str

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d"]


def check_ndim(layer, shape, ndim, expected, batch=True):
    """Raise a ValueError naming ``layer`` unless ``len(shape)`` is right."""
    want = ndim if batch else ndim - 1
    if len(shape) != want:
        if not batch:
            expected = expected.replace("(N, ", "(")
        raise ValueError(f"{layer!r}: expected a {want}-D input {expected}, got {shape_str(shape)}")


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        where = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1, where=where)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", minimum=1,
                                                                   where=where)
        self.padding = pair(padding, "padding", minimum=0, where=where)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{where}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")
        self._x = None

    def _arg(self, v):
        return v[0] if v[0] == v[1] else v

    def extra_repr(self):
        return (f"kernel_size={self._arg(self.kernel_size)}, stride={self._arg(self.stride)}, "
                f"padding={self._arg(self.padding)}")

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def output_shape(self, input_shape):
        check_ndim(self, input_shape, 4, "(N, C, H, W)", batch=False)
        c, h, w = input_shape
        where = repr(self)
        return (c,
                out_size(h, self.kernel_size[0], self.stride[0], self.padding[0], 1, where=where, axis="H"),
                out_size(w, self.kernel_size[1], self.stride[1], self.padding[1], 1, where=where, axis="W"))


class MaxPool2d(_Pool2d):
    """Maximum over ``kernel_size`` windows of ``(N, C, H, W)`` inputs (``stride`` defaults to
    ``kernel_size``; padded cells never win).

    In training mode ``forward`` keeps the argmax indices (int64, one per output) and the
    input's shape and dtype, not the input, and ``backward`` scatters the gradient there;
    in eval mode it keeps the input and ``backward`` finds the argmaxes again (same result).
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride, padding)
        self._indices = None
        self._x_like = None  # a zero-stride stand-in with the input's shape and dtype

    def forward(self, x):
        check_ndim(self, x.shape, 4, "(N, C, H, W)")
        if not self.training:
            self._x, self._indices, self._x_like = x, None, None
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        y, self._indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                        return_indices=True)
        self._x, self._x_like = None, np.broadcast_to(np.zeros((), y.dtype), x.shape)
        return y

    def backward(self, grad_out):
        if self._indices is not None:
            return F.max_pool2d_backward(grad_out, self._x_like, self.kernel_size, self.stride,
                                         self.padding, indices=self._indices)
        if self._x is None:
            raise self._backward_before_forward()
        return F.max_pool2d_backward(grad_out, self._x, self.kernel_size, self.stride,
                                     self.padding)


class AvgPool2d(_Pool2d):
    """Mean over ``kernel_size`` windows; with ``count_include_pad`` padded zeros count in the
    divisor (PyTorch's default)."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.count_include_pad else s + ", count_include_pad=False"

    def get_config(self):
        return dict(super().get_config(), count_include_pad=self.count_include_pad)

    def forward(self, x):
        check_ndim(self, x.shape, 4, "(N, C, H, W)")
        self._x = x
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def backward(self, grad_out):
        if self._x is None:
            raise self._backward_before_forward()
        return F.avg_pool2d_backward(grad_out, self._x, self.kernel_size, self.stride,
                                     self.padding, self.count_include_pad)


class GlobalAvgPool2d(Layer):
    """Mean over H and W: ``(N, C, H, W) -> (N, C)``."""

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        check_ndim(self, x.shape, 4, "(N, C, H, W)")
        self._x = x
        return F.global_avg_pool2d(x)

    def backward(self, grad_out):
        if self._x is None:
            raise self._backward_before_forward()
        return F.global_avg_pool2d_backward(grad_out, self._x)

    def output_shape(self, input_shape):
        check_ndim(self, input_shape, 4, "(N, C, H, W)", batch=False)
        return (input_shape[0],)

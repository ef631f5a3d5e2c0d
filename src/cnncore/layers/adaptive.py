"""Adaptive pooling: :class:`AdaptiveAvgPool2d` (PyTorch's ``nn.AdaptiveAvgPool2d``).

The output has a fixed spatial size whatever the input's. Output cell ``i`` (along one axis,
input size ``I``, output size ``O``) averages the input cells ``floor(i * I / O)`` to
``ceil((i + 1) * I / O) - 1``, as in PyTorch; when ``O`` divides ``I`` these are the
non-overlapping ``I / O`` windows of an ordinary average pooling.

Implementation: the identity when the sizes agree, :func:`cnncore.functional.global_avg_pool2d`
for a 1x1 output, :func:`cnncore.functional.avg_pool2d` when the output size divides the input
size, and otherwise two small averaging matrices, ``y = A_h @ x @ A_w.T`` (and
``grad_x = A_h.T @ grad_y @ A_w``), which covers every other case, including outputs larger
than the input (VGG's 7x7 pool after a 32x32 input).
"""

import numpy as np

from .. import functional as F
from .base import Layer
from .pooling import check_ndim

__all__ = ["AdaptiveAvgPool2d", "adaptive_pool_matrix", "adaptive_avg_pool2d",
           "adaptive_avg_pool2d_backward"]


def _size(v, where):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{where}: output sizes must be positive ints or None, got {v!r}")
    return int(v)


def adaptive_pool_matrix(n_in, n_out, dtype=np.float64):
    """The ``(n_out, n_in)`` matrix whose row ``i`` averages input cells
    ``floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1``."""
    i = np.arange(n_out)
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    cols = np.arange(n_in)
    inside = (cols >= start[:, None]) & (cols < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def _plan(in_hw, out_hw):
    (h, w), (oh, ow) = in_hw, out_hw
    if (h, w) == (oh, ow):
        return "identity"
    if oh == 1 and ow == 1:
        return "global"
    if h % oh == 0 and w % ow == 0:
        return "pool"
    return "matrix"


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling of ``(N, C, H, W)`` to ``(N, C, *output_size)``."""
    oh, ow = output_size
    n, c, h, w = x.shape
    plan = _plan((h, w), (oh, ow))
    if plan == "identity":
        return x
    if plan == "global":
        return F.global_avg_pool2d(x).reshape(n, c, 1, 1)
    if plan == "pool":
        return F.avg_pool2d(x, (h // oh, w // ow))
    ah = adaptive_pool_matrix(h, oh, x.dtype)
    aw = adaptive_pool_matrix(w, ow, x.dtype)
    return np.ascontiguousarray(ah @ (x @ aw.T))


def adaptive_avg_pool2d_backward(grad_out, x, output_size):
    """Gradient of :func:`adaptive_avg_pool2d` with respect to ``x``."""
    oh, ow = output_size
    n, c, h, w = x.shape
    grad_out = np.ascontiguousarray(grad_out, dtype=x.dtype)
    plan = _plan((h, w), (oh, ow))
    if plan == "identity":
        return grad_out
    if plan == "global":
        return F.global_avg_pool2d_backward(grad_out.reshape(n, c), x)
    if plan == "pool":
        return F.avg_pool2d_backward(grad_out, x, (h // oh, w // ow))
    ah = adaptive_pool_matrix(h, oh, x.dtype)
    aw = adaptive_pool_matrix(w, ow, x.dtype)
    return np.ascontiguousarray(ah.T @ (grad_out @ aw))


class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed output size: ``(N, C, H, W) -> (N, C, oh, ow)``.

    Parameters
    ----------
    output_size : int or pair
        ``(oh, ow)``; an int means square; ``None`` in a pair keeps that input size.
        ``AdaptiveAvgPool2d(1)`` is a global average pooling that keeps the 1x1 axes
        (follow it with :class:`Flatten`), as in torchvision's ResNet and DenseNet;
        ``AdaptiveAvgPool2d(7)`` is VGG's, ``AdaptiveAvgPool2d(6)`` AlexNet's.
    """

    def __init__(self, output_size):
        super().__init__()
        where = "AdaptiveAvgPool2d"
        if isinstance(output_size, (tuple, list)):
            if len(output_size) != 2:
                raise ValueError(f"{where}: output_size must be an int or a pair, got "
                                 f"{output_size!r}")
            self.output_size = (_size(output_size[0], where), _size(output_size[1], where))
        else:
            s = _size(output_size, where)
            if s is None:
                raise ValueError(f"{where}: output_size must be an int or a pair, got None")
            self.output_size = (s, s)
        self._x = None

    def _out(self, h, w):
        oh, ow = self.output_size
        return (h if oh is None else oh, w if ow is None else ow)

    def forward(self, x):
        check_ndim(self, x.shape, 4, "(N, C, H, W)")
        self._x = x
        return adaptive_avg_pool2d(x, self._out(*x.shape[2:]))

    def backward(self, grad_out):
        if self._x is None:
            raise self._backward_before_forward()
        return adaptive_avg_pool2d_backward(grad_out, self._x, self._out(*self._x.shape[2:]))

    def output_shape(self, input_shape):
        check_ndim(self, input_shape, 4, "(N, C, H, W)", batch=False)
        c, h, w = input_shape
        return (c,) + self._out(h, w)

    def get_config(self):
        return {"output_size": list(self.output_size)}

    def extra_repr(self):
        oh, ow = self.output_size
        return f"output_size={oh if oh == ow else self.output_size}"

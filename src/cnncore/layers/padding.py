"""Padding layers: :class:`ConstantPad2d` and :class:`ZeroPad2d` (PyTorch's names and argument
order). Convolutions and pools pad symmetrically themselves; these layers give the uneven
padding some imported models use (ONNX ``pads`` that differ at the two ends, TensorFlow's
'SAME' with an even kernel): ``ZeroPad2d((0, 1, 0, 1))`` then a convolution without padding.
"""

import numpy as np

from .base import Layer, shape_str
from .pooling import check_ndim

__all__ = ["ConstantPad2d", "ZeroPad2d"]


def _four(padding, where):
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = (padding,) * 4
    if not isinstance(padding, (tuple, list)) or len(padding) != 4 or any(
            isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in padding):
        raise ValueError(f"{where}: padding must be an int or (left, right, top, bottom) "
                         f"non-negative ints, got {padding!r}")
    return tuple(int(p) for p in padding)


class ConstantPad2d(Layer):
    """Pad the last two axes of ``(N, C, H, W)`` inputs with ``value``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom)
    value : float
        ``-inf`` before a max-pool makes padded cells never win.
    """

    def __init__(self, padding, value=0.0):
        super().__init__()
        self.padding = _four(padding, type(self).__name__)
        self.value = float(value)
        self._hw = None

    def forward(self, x):
        check_ndim(self, x.shape, 4, "(N, C, H, W)")
        left, right, top, bottom = self.padding
        n, c, h, w = x.shape
        y = np.full((n, c, h + top + bottom, w + left + right), self.value, dtype=x.dtype)
        y[:, :, top:top + h, left:left + w] = x
        self._hw = (h, w)
        return y

    def backward(self, grad_out):
        if self._hw is None:
            raise self._backward_before_forward()
        left, _, top, _ = self.padding
        h, w = self._hw
        return np.ascontiguousarray(grad_out[:, :, top:top + h, left:left + w])

    def output_shape(self, input_shape):
        check_ndim(self, input_shape, 4, "(N, C, H, W)", batch=False)
        left, right, top, bottom = self.padding
        c, h, w = input_shape
        return (c, h + top + bottom, w + left + right)

    def get_config(self):
        return {"padding": list(self.padding), "value": self.value}

    def extra_repr(self):
        return f"padding={shape_str(self.padding)}, value={self.value}"


class ZeroPad2d(ConstantPad2d):
    """:class:`ConstantPad2d` with zeros."""

    def __init__(self, padding):
        super().__init__(padding, 0.0)

    def get_config(self):
        return {"padding": list(self.padding)}

    def extra_repr(self):
        return f"padding={shape_str(self.padding)}"

"""Convolution layers: :class:`Conv2d` and :class:`Conv1d` (cross-correlation, NCHW / NCL)."""

import numpy as np

from .._args import conv_padding, out_size, pair
from .._checks import check_given
from .. import functional as F
from .base import WeightedLayer, check_float_dtype, shape_str

__all__ = ["Conv2d", "Conv1d"]


def _one(value, name, where, minimum):
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise TypeError(f"{where}: {name} must be an int or a 1-tuple, got {value!r}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value!r}")
    return int(value)


class _ConvNd(WeightedLayer):
    """Shared parts of Conv1d / Conv2d: parameters, initialisation, config, checks."""

    _nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, weight_init="he_uniform", bias_init="zeros",
                 dtype=np.float32, rng=None):
        super().__init__()
        where = type(self).__name__
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{where}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        if self._nd == 2:
            self.kernel_size = pair(kernel_size, "kernel_size", minimum=1, where=where)
            self.stride = pair(stride, "stride", minimum=1, where=where)
            self.dilation = pair(dilation, "dilation", minimum=1, where=where)
            self._pad = conv_padding(padding, self.kernel_size, self.dilation, where=where)
        else:
            self.kernel_size = (_one(kernel_size, "kernel_size", where, 1),)
            self.stride = (_one(stride, "stride", where, 1),)
            self.dilation = (_one(dilation, "dilation", where, 1),)
            if isinstance(padding, str):
                self._pad = (conv_padding(padding, (1,) + self.kernel_size,
                                          (1,) + self.dilation, where=where)[1],)
            else:
                self._pad = (_one(padding, "padding", where, 0),)
        self.padding = padding if isinstance(padding, str) else self._pad
        self._dtype = check_float_dtype(dtype, where)
        wshape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self._init_weight_bias(wshape, bias, weight_init, bias_init, rng)

    def get_config(self):
        pad = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": pad, "dilation": list(self.dilation), "groups": self.groups,
                "bias": self.bias is not None, "weight_init": self.weight_init,
                "bias_init": self.bias_init, "dtype": self._dtype.name}

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if isinstance(self.padding, str):
            s += f", padding={self.padding!r}"
        elif any(self._pad):
            s += f", padding={self._pad}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def _expected(self):
        spatial = ", H, W" if self._nd == 2 else ", L"
        return f"(N, {self.in_channels}{spatial})"

    def _check_input(self, shape, batch=True):
        ndim = self._nd + (2 if batch else 1)
        c_axis = 1 if batch else 0
        plural = "" if self.in_channels == 1 else "s"
        if len(shape) != ndim or shape[c_axis] != self.in_channels:
            expected = self._expected() if batch else self._expected().replace("(N, ", "(")
            raise ValueError(f"{self!r}: expected input with {self.in_channels} channel{plural} "
                             f"{expected}, got {shape_str(shape)}")

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_input(input_shape, batch=False)
        where = repr(self)
        sizes = []
        axes = ("H", "W") if self._nd == 2 else ("L",)
        for i in range(self._nd):
            sizes.append(out_size(input_shape[1 + i], self.kernel_size[i], self.stride[i],
                                  self._pad[i], self.dilation[i], where=where, axis=axes[i]))
        return (self.out_channels,) + tuple(sizes)

    def _bias_data(self):
        return None if self.bias is None else self.bias.data

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def backward_params(self, grad_out):
        self._backward(grad_out, False)  # no input gradient: one kernel pass less

class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation) over ``(N, C_in, H, W)`` inputs.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or pair of ints
    padding : int, pair or 'valid' / 'same' / 'full'
    groups : int
        ``in_channels`` and ``out_channels`` must be divisible by it.
    bias : bool
    weight_init, bias_init : str
        Initialiser names from :mod:`cnncore.layers.init` (default He uniform and zeros).
    dtype : float32 or float64
    rng : numpy Generator, int seed or None
        Source of the initial weights.

    Attributes
    ----------
    weight : Parameter ``(C_out, C_in // groups, kH, kW)``
    bias : Parameter ``(C_out,)`` or None

    Notes
    -----
    In eval mode a layer that runs by Winograd keeps its transformed weights (16/9 the size
    of the weight) between calls while ``weight.version`` is unchanged: assigning
    ``weight.data``, an optimiser step, ``load_state_dict`` and ``reset_parameters`` change
    it; after writing into ``weight.data`` through a view (``weight.data[...] = a``) call
    ``weight.mark_changed()`` or ``eval()`` again. ``train()`` and ``eval()`` drop them; in
    training mode nothing is kept.
    """

    _nd = 2
    _transforms = None  # F.conv.WinogradWeights, made in eval mode

    def train(self, mode=True):
        self._transforms = None
        return super().train(mode)

    def _cache(self):
        """(cache, token) for the functional calls: kept transforms in eval mode only."""
        if self.training:
            return None, None
        if self._transforms is None:
            self._transforms = F.conv.WinogradWeights()
        return self._transforms, self.weight.version

    def forward(self, x):
        x = self._check_dtype(x)
        self._check_input(x.shape)
        cache, token = self._cache()
        y = F.conv._conv_forward("conv2d", x, self.weight.data, self._bias_data(),
                                 self.stride, self._pad, self.dilation, self.groups, None,
                                 cache=cache, token=token)
        self._x = x
        return y

    def _backward(self, grad_out, need_grad_x):
        if self._x is None:
            raise self._backward_before_forward()
        check_given("conv2d_backward", "grad_out", grad_out)
        cache, token = self._cache()
        gx, gw, gb = F.conv._conv_backward("conv2d_backward", grad_out, self._x,
                                           self.weight.data, self.stride, self._pad,
                                           self.dilation, self.groups, None,
                                           need_grad_x=need_grad_x, cache=cache,
                                           token=token)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx


class Conv1d(_ConvNd):
    """1-D convolution (cross-correlation) over ``(N, C_in, L)`` inputs; arguments as
    :class:`Conv2d` with ints (or 1-tuples) instead of pairs."""

    _nd = 1

    def forward(self, x):
        x = self._check_dtype(x)
        self._check_input(x.shape)
        y = F.conv1d(x, self.weight.data, self._bias_data(), self.stride[0], self._pad[0],
                     self.dilation[0], self.groups)
        self._x = x
        return y

    def _backward(self, grad_out, need_grad_x):
        if self._x is None:
            raise self._backward_before_forward()
        gx, gw, gb = F.conv1d_backward(grad_out, self._x, self.weight.data, self.stride[0],
                                       self._pad[0], self.dilation[0], self.groups,
                                       need_grad_x=need_grad_x)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx

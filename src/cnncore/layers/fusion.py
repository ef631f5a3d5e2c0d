"""Inference-only fused copies of a model: :func:`fuse` (also ``model.fuse()`` on every
container).

In eval mode a BatchNorm is a per-channel affine map, so after a convolution it folds into
the convolution's weights and bias::

    a = gamma / sqrt(running_var + eps)
    w' = w * a[c_out]        b' = (b - running_mean) * a + beta

and a ReLU after it becomes an in-place pass over the convolution's output (no new array).
The rewrites, within each :class:`Sequential` (and the body of a zoo ``ResidualBlock``):

=============================  ==============================================================
``Conv2d, BatchNorm2d[, ReLU]`` one :class:`FusedConv2d` (folded weights, ReLU in place)
``Conv2d, ReLU``                one :class:`FusedConv2d`
``BatchNorm2d, ReLU``           one :class:`FusedBatchNorm2d` (one pass: affine then ReLU)
``Residual, ReLU``              the Residual adds and applies ReLU in one pass
``Dropout``                     removed (the identity in eval mode)
=============================  ==============================================================

and a ``ResidualBlock`` whose activation is a ReLU adds its two paths and applies the ReLU in
one pass, in place into the body's output. The fused model computes what the eval-mode model
computes (up to rounding: float64 within 1e-10, float32 within about 1e-5 relative).

A fused model is for inference only: it has no backward, and ``train()`` raises. The
original model is not changed and stays trainable; fuse it again after more training.
"""

import copy

import numpy as np

from .. import functional as F
from ..functional import norm as _fnorm
from .activation import ReLU
from .base import Layer
from .conv import Conv2d
from .norm import BatchNorm2d, Dropout

__all__ = ["fuse", "FusedConv2d", "FusedBatchNorm2d", "fold_batch_norm"]


def inference_only_error(layer, what):
    return RuntimeError(f"{layer!r} is part of a fused, inference-only model "
                        f"(cnncore.layers.fuse): {what} is not supported; train the original "
                        "model and fuse it again")


class _InferenceOnly:
    """Mixin: ``backward`` and ``train(True)`` raise."""

    def backward(self, grad_out):
        raise inference_only_error(self, "backward()")

    def backward_params(self, grad_out):
        raise inference_only_error(self, "backward()")

    def train(self, mode=True):
        if mode:
            raise inference_only_error(self, "train mode")
        return Layer.train(self, False)


class FusedConv2d(_InferenceOnly, Conv2d):
    """Inference-only :class:`Conv2d` with an optional ReLU applied in place to its output
    (made by :func:`fuse`, usually with a BatchNorm folded into its weights and bias)."""

    def __init__(self, *args, relu=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = bool(relu)
        self.training = False

    def forward(self, x):
        x = self._check_dtype(x)
        self._check_input(x.shape)
        cache, token = self._cache()  # Winograd transforms kept between calls
        y = F.conv._conv_forward("conv2d", x, self.weight.data, self._bias_data(), self.stride,
                                 self._pad, self.dilation, self.groups, None, cache=cache,
                                 token=token)
        return _fnorm.relu_(y) if self.relu else y

    def get_config(self):
        return dict(super().get_config(), relu=self.relu)

    def extra_repr(self):
        return super().extra_repr() + (", relu=True" if self.relu else "") + ", inference-only"


class FusedBatchNorm2d(_InferenceOnly, BatchNorm2d):
    """Inference-only :class:`BatchNorm2d` (running statistics) followed by a ReLU, in one
    pass over memory (made by :func:`fuse`)."""

    def __init__(self, *args, relu=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = bool(relu)
        self.training = False

    def forward(self, x):
        x = self._check_dtype(x)
        self._check(x.shape)
        if not self.relu:
            return F.batch_norm(x, self.weight.data, self.bias.data, self.running_mean,
                                self.running_var, False, self.momentum, self.eps)[0]
        x = np.ascontiguousarray(x)
        inv_std = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
        scale = (self.weight.data * inv_std).astype(x.dtype)
        return _fnorm.batch_norm_relu_eval(x, scale, self.bias.data.astype(x.dtype),
                                           self.running_mean.astype(x.dtype))

    def get_config(self):
        return dict(super().get_config(), relu=self.relu)

    def extra_repr(self):
        return super().extra_repr() + (", relu=True" if self.relu else "") + ", inference-only"


def fold_batch_norm(conv, bn, relu=False):
    """A :class:`FusedConv2d` computing ``bn(conv(x))`` (eval mode, running statistics), then
    ReLU if ``relu``. Computed in float64, stored in the convolution's dtype."""
    cfg = dict(conv.get_config(), bias=True, weight_init="zeros", bias_init="zeros")
    fused = FusedConv2d(**cfg, relu=relu)
    w = conv.weight.data.astype(np.float64)
    b = np.zeros(conv.out_channels) if conv.bias is None else conv.bias.data.astype(np.float64)
    if bn is None:
        a, shift = np.ones(conv.out_channels), b
    else:
        a = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64)
                                                        + bn.eps)
        shift = (b - bn.running_mean.astype(np.float64)) * a + bn.bias.data.astype(np.float64)
    fused.weight.data[...] = w * a.reshape(-1, 1, 1, 1)
    fused.bias.data[...] = shift
    fused.weight.mark_changed()  # written through views: no kept transform may survive
    fused.bias.mark_changed()
    return fused


def _is(layer, cls):
    return type(layer) is cls


def fuse_sequence(items):
    """Rewrite a list of ``(name, layer)`` applied in order (see the module docstring); a
    fused layer takes the name of the first layer it replaces."""
    out, i = [], 0
    while i < len(items):
        name, layer = items[i]
        nxt = items[i + 1][1] if i + 1 < len(items) else None
        after = items[i + 2][1] if i + 2 < len(items) else None
        if _is(layer, Conv2d) and _is(nxt, BatchNorm2d) and nxt.num_features == layer.out_channels:
            relu = _is(after, ReLU)
            out.append((name, fold_batch_norm(layer, nxt, relu)))
            i += 3 if relu else 2
        elif _is(layer, Conv2d) and _is(nxt, ReLU):
            out.append((name, fold_batch_norm(layer, None, True)))
            i += 2
        elif _is(layer, BatchNorm2d) and _is(nxt, ReLU):
            cfg = layer.get_config()
            fused = FusedBatchNorm2d(**cfg, relu=True)
            fused.load_state_dict(layer.state_dict())
            out.append((name, fused))
            i += 2
        elif getattr(layer, "_fuse_relu_after", None) is not None and _is(nxt, ReLU):
            layer._fuse_relu_after()  # e.g. Residual: add + ReLU in one pass
            out.append((name, layer))
            i += 2
        elif _is(layer, Dropout):
            i += 1
        else:
            out.append((name, layer))
            i += 1
    return out


def _fuse_layer(layer):
    """The fused replacement of ``layer`` (which may be ``layer`` itself, changed in place)."""
    hook = getattr(layer, "_fuse", None)
    if hook is not None:
        return hook(_fuse_layer)
    for name, child in list(layer._children.items()):
        new = _fuse_layer(child)
        if new is not child:
            layer._children[name] = new
            for attr, value in list(vars(layer).items()):
                if value is child:
                    setattr(layer, attr, new)
    return layer


def fuse(model):
    """An inference-only copy of ``model`` with every BatchNorm after a convolution folded
    into it and the ReLUs that follow fused (see :mod:`cnncore.layers.fusion`).

    ``model`` itself is not changed. The copy is in eval mode; its ``backward`` and
    ``train()`` raise RuntimeError. Its outputs equal the eval-mode outputs of ``model`` up
    to rounding.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"fuse: expected a cnncore Layer, got {type(model).__name__}")
    # the arrays cached by the last forward are not copied
    memo = {id(v): None for _, layer in model.named_layers() for k, v in vars(layer).items()
            if k in _CACHES and v is not None}
    fused = copy.deepcopy(model, memo)
    fused.eval()
    return _fuse_layer(fused)


_CACHES = ("_x", "_cache", "_mask", "_out")

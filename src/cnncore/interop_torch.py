"""A cnncore model as an equivalent ``torch.nn.Module``: :func:`to_torch`.

Every layer becomes its PyTorch counterpart with the same hyper-parameters and a copy of
the same weights and buffers; containers keep their children's names, so the torch
module's ``state_dict()`` has the names (and order) of
:func:`cnncore.interop.torch_state_dict`::

    from cnncore import zoo
    from cnncore.interop import to_torch
    model = zoo.resnet(18, variant="cifar").eval()
    tmodel = to_torch(model)          # torch.nn.Module, eval mode, float32 weights copied
    with torch.inference_mode():
        logits = tmodel(torch.from_numpy(x))      # == model.forward(x) to ~1e-6

==========================================  ==========================================
cnncore                                     torch
==========================================  ==========================================
Conv2d / Conv1d (padding resolved to ints)  nn.Conv2d / nn.Conv1d
Linear, Flatten, Identity, Dropout          nn.Linear, nn.Flatten, nn.Identity, nn.Dropout
MaxPool2d, AvgPool2d, AdaptiveAvgPool2d     nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d
GlobalAvgPool2d                             GlobalAvgPool2d (``x.mean((2, 3))``)
ReLU, LeakyReLU, Sigmoid, Tanh, Softmax     the same names (Softmax's ``axis`` -> ``dim``)
BatchNorm1d / 2d, LocalResponseNorm         the same names (eps, momentum, running stats)
Sequential, zoo.NamedSequential (ResNet,    nn.Sequential with the same child names
VGG, AlexNet, DenseNet)
zoo.ResidualBlock, zoo.DenseLayer,          the modules of :mod:`cnncore._torch_modules`
Residual, Concat
==========================================  ==========================================

A subclass of one of these classes converts like it unless it overrides ``forward``.
Other layers raise ``TypeError`` naming them; :func:`register_torch_converter` adds one.
torch is imported inside :func:`to_torch` only: cnncore never needs it.
"""

from collections import OrderedDict

import numpy as np

from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv1d,
                     Conv2d, Dropout, Flatten, GlobalAvgPool2d, Identity, LeakyReLU, Linear,
                     LocalResponseNorm, MaxPool2d, ReLU, Residual, Sequential, Sigmoid, Softmax,
                     Tanh)
from .layers.base import Layer
from .zoo.blocks import DenseLayer, NamedSequential, ResidualBlock

__all__ = ["to_torch", "register_torch_converter"]

#: cnncore layer class -> converter ``fn(layer, ctx) -> torch.nn.Module``.
_CONVERTERS = {}


def register_torch_converter(cls):
    """Decorator: ``@register_torch_converter(MyLayer)`` over ``fn(layer, ctx)`` teaches
    :func:`to_torch` a layer class.

    ``fn`` returns the ``torch.nn.Module`` equivalent of ``layer`` with its weights
    copied; ``ctx.torch`` is the torch module, ``ctx.convert(child, name)`` converts a
    child layer, ``ctx.copy(module_param, array)`` copies an array into a parameter or
    buffer (in the array's dtype). The training mode is set by :func:`to_torch`.
    """
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_torch_converter: expected a Layer subclass, got {cls!r}")

    def decorate(fn):
        _CONVERTERS[cls] = fn
        return fn
    return decorate


def _find_converter(layer):
    """The converter of ``layer``'s class, or of the nearest registered base class whose
    ``forward`` and ``backward`` the class does not override; None if there is none."""
    cls = type(layer)
    for base in cls.__mro__:
        fn = _CONVERTERS.get(base)
        if fn is None:
            continue
        same = all(getattr(cls, m, None) is getattr(base, m, None)
                   for m in ("forward", "backward"))
        return fn if same else None
    return None


class _Context:
    """What converters get: torch, the child converter and the weight copier."""

    def __init__(self, torch):
        self.torch = torch
        self.nn = torch.nn
        self._path = [""]

    def dtype_of(self, array):
        return self.torch.float64 if np.dtype(array.dtype) == np.float64 else self.torch.float32

    def copy(self, target, array):
        """Copy ``array`` into the tensor ``target`` (no gradient tracking)."""
        with self.torch.no_grad():
            target.copy_(self.torch.from_numpy(np.ascontiguousarray(array)))

    def convert(self, layer, name=None):
        """Convert ``layer`` (a child called ``name`` of the layer being converted)."""
        if name is not None:
            self._path.append(f"{self._path[-1]}.{name}" if self._path[-1] else str(name))
        try:
            fn = _find_converter(layer)
            if fn is None:
                where = self._path[-1] or "the model"
                raise TypeError(f"to_torch: no PyTorch equivalent for {type(layer).__name__} "
                                f"({where}: {layer!r}); register one with "
                                "cnncore.interop.register_torch_converter")
            module = fn(layer, self)
            module.training = bool(layer.training)  # this module only; children set theirs
            return module
        finally:
            if name is not None:
                self._path.pop()

    def children(self, layer):
        """``OrderedDict(name -> converted child)`` in the layer's order."""
        return OrderedDict((name, self.convert(child, name))
                           for name, child in layer.named_children())


def to_torch(model):
    """An equivalent ``torch.nn.Module`` of a cnncore model, with copies of its weights.

    Parameters
    ----------
    model : cnncore.layers.Layer
        A zoo model or any model made of cnncore layers and containers (see the module
        docstring for the mapping).

    Returns
    -------
    torch.nn.Module
        Same architecture and child names (``module.state_dict()`` has the names of
        :func:`cnncore.interop.torch_state_dict`), parameters and BatchNorm running
        statistics copied in the model's dtype (float32 or float64), and every module in
        the training / eval mode of its cnncore layer. Later changes to either model do
        not affect the other.

    Raises
    ------
    ImportError
        If torch is not installed.
    TypeError
        If ``model`` is not a Layer, or for a layer (named in the message) with no
        PyTorch equivalent, e.g. a user layer with its own ``forward``.

    Notes
    -----
    Dropout layers draw their masks from torch's generator, so training-mode outputs of
    a model with ``Dropout(p > 0)`` differ between the two; everything else agrees to
    rounding (float32 about 1e-6 relative, float64 about 1e-14).
    """
    if not isinstance(model, Layer):
        raise TypeError(f"to_torch: expected a cnncore Layer, got {type(model).__name__}")
    try:
        import torch
    except ImportError as exc:
        raise ImportError("to_torch needs PyTorch (pip install torch); cnncore itself "
                          "does not") from exc
    return _Context(torch).convert(model)


# ---------------------------------------------------------------------------- converters
def _weights(ctx, module, layer):
    ctx.copy(module.weight, layer.weight.data)
    if getattr(layer, "bias", None) is not None:
        ctx.copy(module.bias, layer.bias.data)
    return module


@register_torch_converter(Conv2d)
def _conv2d(layer, ctx):
    m = ctx.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                      stride=layer.stride, padding=tuple(layer._pad), dilation=layer.dilation,
                      groups=layer.groups, bias=layer.bias is not None,
                      dtype=ctx.dtype_of(layer.weight.data))
    return _weights(ctx, m, layer)


@register_torch_converter(Conv1d)
def _conv1d(layer, ctx):
    m = ctx.nn.Conv1d(layer.in_channels, layer.out_channels, layer.kernel_size[0],
                      stride=layer.stride[0], padding=layer._pad[0],
                      dilation=layer.dilation[0], groups=layer.groups,
                      bias=layer.bias is not None, dtype=ctx.dtype_of(layer.weight.data))
    return _weights(ctx, m, layer)


@register_torch_converter(Linear)
def _linear(layer, ctx):
    m = ctx.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                      dtype=ctx.dtype_of(layer.weight.data))
    return _weights(ctx, m, layer)


def _batch_norm(cls_name):
    def convert(layer, ctx):
        m = getattr(ctx.nn, cls_name)(layer.num_features, eps=layer.eps,
                                      momentum=layer.momentum,
                                      dtype=ctx.dtype_of(layer.weight.data))
        _weights(ctx, m, layer)
        ctx.copy(m.running_mean, layer.running_mean)
        ctx.copy(m.running_var, layer.running_var)
        return m
    return convert


register_torch_converter(BatchNorm2d)(_batch_norm("BatchNorm2d"))
register_torch_converter(BatchNorm1d)(_batch_norm("BatchNorm1d"))


@register_torch_converter(LocalResponseNorm)
def _lrn(layer, ctx):
    return ctx.nn.LocalResponseNorm(layer.size, alpha=layer.alpha, beta=layer.beta, k=layer.k)


@register_torch_converter(MaxPool2d)
def _max_pool(layer, ctx):
    return ctx.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)


@register_torch_converter(AvgPool2d)
def _avg_pool(layer, ctx):
    return ctx.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                            count_include_pad=layer.count_include_pad)


@register_torch_converter(AdaptiveAvgPool2d)
def _adaptive_pool(layer, ctx):
    return ctx.nn.AdaptiveAvgPool2d(tuple(layer.output_size))


@register_torch_converter(GlobalAvgPool2d)
def _global_pool(layer, ctx):
    from . import _torch_modules as M
    return M.GlobalAvgPool2d()


@register_torch_converter(LeakyReLU)
def _leaky_relu(layer, ctx):
    return ctx.nn.LeakyReLU(layer.negative_slope)


@register_torch_converter(Softmax)
def _softmax(layer, ctx):
    return ctx.nn.Softmax(dim=layer.axis)


@register_torch_converter(Dropout)
def _dropout(layer, ctx):
    return ctx.nn.Dropout(layer.p)


def _plain(name, **kwargs):
    return lambda layer, ctx: getattr(ctx.nn, name)(**kwargs)


register_torch_converter(ReLU)(_plain("ReLU"))
register_torch_converter(Sigmoid)(_plain("Sigmoid"))
register_torch_converter(Tanh)(_plain("Tanh"))
register_torch_converter(Identity)(_plain("Identity"))
register_torch_converter(Flatten)(_plain("Flatten", start_dim=1))


# ---------------------------------------------------------------------------- containers
@register_torch_converter(Sequential)
def _sequential(layer, ctx):
    return ctx.nn.Sequential(ctx.children(layer))


# NamedSequential overrides no computation of Sequential; registered for clarity.
register_torch_converter(NamedSequential)(_sequential)


@register_torch_converter(ResidualBlock)
def _residual_block(layer, ctx):
    from . import _torch_modules as M
    return M.ResidualBlock(ctx.children(layer), shortcut=layer._shortcut_name,
                           activation=layer._activation_name)


@register_torch_converter(DenseLayer)
def _dense_layer(layer, ctx):
    from . import _torch_modules as M
    return M.DenseLayer(ctx.children(layer))


@register_torch_converter(Residual)
def _residual(layer, ctx):
    from . import _torch_modules as M
    shortcut = None if layer.shortcut is None else ctx.convert(layer.shortcut, "shortcut")
    return M.Residual(ctx.convert(layer.body, "body"), shortcut)


@register_torch_converter(Concat)
def _concat(layer, ctx):
    from . import _torch_modules as M
    return M.Concat(ctx.children(layer), dim=layer.axis)


# Graph, Add, Concatenate and the padding layers (issue 14) register their converters there.
from . import interop_graph  # noqa: E402,F401

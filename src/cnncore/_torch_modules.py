"""The ``torch.nn`` modules that :func:`cnncore.interop.to_torch` builds where PyTorch has
no ready-made equivalent of a cnncore container or layer.

This module imports torch at the top: only :func:`cnncore.interop.to_torch` imports it,
inside the function, so that cnncore itself never needs torch. The classes live here (and
not inside a function) so that converted models can be pickled with ``torch.save``.
"""

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["ResidualBlock", "DenseLayer", "Residual", "Concat", "GlobalAvgPool2d"]


class ResidualBlock(nn.Module):
    """``activation(body(x) + shortcut(x))``, the twin of :class:`cnncore.zoo.ResidualBlock`.

    Parameters
    ----------
    children : OrderedDict of str -> nn.Module
        Every child under its cnncore name, in the cnncore order (so that the parameter
        names and order of ``state_dict()`` are the same as the cnncore model's).
    shortcut, activation : str or None
        Names of the skip-path child and of the child applied after the sum.
    """

    def __init__(self, children, shortcut=None, activation=None):
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)
        self.shortcut_name, self.activation_name = shortcut, activation
        self.body_names = [n for n in children if n not in (shortcut, activation)]

    def forward(self, x):
        y = x
        for name in self.body_names:
            y = self._modules[name](y)
        s = x if self.shortcut_name is None else self._modules[self.shortcut_name](x)
        z = y + s
        return z if self.activation_name is None else self._modules[self.activation_name](z)

    def extra_repr(self):
        return f"shortcut={self.shortcut_name!r}, activation={self.activation_name!r}"


class DenseLayer(nn.Sequential):
    """``cat([x, body(x)], dim=1)``, the twin of :class:`cnncore.zoo.DenseLayer`."""

    def forward(self, x):
        return torch.cat([x, super().forward(x)], 1)


class Residual(nn.Module):
    """``body(x) + x`` or ``body(x) + shortcut(x)`` (:class:`cnncore.layers.Residual`)."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class Concat(nn.Module):
    """Branch outputs concatenated along ``dim`` (:class:`cnncore.layers.Concat`)."""

    def __init__(self, branches, dim=1):
        super().__init__()
        for name, module in OrderedDict(branches).items():
            self.add_module(name, module)
        self.dim = dim

    def forward(self, x):
        return torch.cat([m(x) for m in self._modules.values()], self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class GlobalAvgPool2d(nn.Module):
    """Mean over H and W: ``(N, C, H, W) -> (N, C)`` (:class:`cnncore.layers.GlobalAvgPool2d`)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))

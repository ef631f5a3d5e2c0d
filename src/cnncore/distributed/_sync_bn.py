"""Synchronised BatchNorm as a hook: while installed, the BatchNorm layers of a model
normalise with the statistics of the *global* batch (every rank's shard) in training mode.

The layers themselves are not changed: :func:`install` sets instance attributes
``forward`` / ``backward`` that shadow the class methods, :func:`uninstall` removes them.
Eval mode (running statistics) goes to the layer's own methods.

Per channel, with ``M`` values over all ranks: forward reduces ``(sum x, count)`` then
``sum (x - mean)^2`` (two-pass, as the one-process kernel); backward reduces
``(sum g, sum g * x_hat)``. The parameter gradients added to ``weight.grad`` / ``bias.grad``
are this rank's part only: the Trainer's gradient sum completes them.
"""

import numpy as np

from ..layers.norm import BatchNorm1d, BatchNorm2d

__all__ = ["install", "uninstall", "batchnorm_layers"]


def batchnorm_layers(model):
    return [layer for _, layer in model.named_layers()
            if isinstance(layer, (BatchNorm1d, BatchNorm2d))]


def _view(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _forward(layer, comm, x):
    if not layer.training:
        return type(layer).forward(layer, x)
    x = layer._check_dtype(x)
    layer._check(x.shape)
    c, nd = x.shape[1], x.ndim
    axes = (0,) + tuple(range(2, nd))
    stats = np.empty(c + 1, np.float64)
    stats[:c] = x.sum(axis=axes, dtype=np.float64)
    stats[c] = x.size // c
    comm.allreduce_sum_(stats)
    m = stats[c]
    if m < 2:
        raise ValueError(f"{layer!r}: training needs more than 1 value per channel over all "
                         f"ranks, got input shape {x.shape} on this rank")
    mean = (stats[:c] / m).astype(x.dtype)
    centred = x - _view(mean, nd)
    sq = np.square(centred).sum(axis=axes, dtype=np.float64)
    comm.allreduce_sum_(sq)
    var = sq / m
    inv_std = (1.0 / np.sqrt(var + layer.eps)).astype(x.dtype)
    x_hat = np.multiply(centred, _view(inv_std, nd), out=centred)
    mom = layer.momentum
    layer.running_mean *= 1.0 - mom
    layer.running_mean += (mom * mean).astype(layer.running_mean.dtype)
    layer.running_var *= 1.0 - mom
    layer.running_var += (mom * m / (m - 1) * var).astype(layer.running_var.dtype)
    y = x_hat * _view(layer.weight.data, nd)
    y += _view(layer.bias.data, nd)
    layer._cache = (x_hat, inv_std, True, m)
    return y.astype(x.dtype, copy=False)


def _backward(layer, comm, grad_out):
    if layer._cache is None:
        raise layer._backward_before_forward()
    if len(layer._cache) != 4:  # an eval-mode forward: the layer's own backward
        return type(layer).backward(layer, grad_out)
    x_hat, inv_std, _, m = layer._cache
    c, nd = grad_out.shape[1], grad_out.ndim
    axes = (0,) + tuple(range(2, nd))
    gb = grad_out.sum(axis=axes)
    gg = np.sum(grad_out * x_hat, axis=axes)
    layer.weight.grad += gg  # this rank's part; the Trainer sums the ranks
    layer.bias.grad += gb
    sums = np.empty(2 * c, np.float64)
    sums[:c], sums[c:] = gb, gg
    comm.allreduce_sum_(sums)
    dt = grad_out.dtype
    gx = x_hat * _view((sums[c:] / m).astype(dt), nd)
    gx += _view((sums[:c] / m).astype(dt), nd)
    np.subtract(grad_out, gx, out=gx)
    gx *= _view(layer.weight.data * inv_std, nd)
    return gx.astype(dt, copy=False)


def install(model, comm):
    """Hook every BatchNorm layer of ``model``; returns the hooked layers."""
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.forward = lambda x, _l=layer: _forward(_l, comm, x)
        layer.backward = lambda g, _l=layer: _backward(_l, comm, g)
    return layers


def uninstall(layers):
    for layer in layers:
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("backward", None)
        layer._cache = None

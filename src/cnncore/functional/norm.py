"""Normalisation and dropout: batch norm (compiled, :mod:`cnncore._kernels.norm`), local
response norm and dropout (vectorised NumPy, :mod:`cnncore._norm_kernels`), their gradients,
and the fused inference epilogue :func:`add_relu`.

Batch norm runs one task per channel: each channel's statistics are reduced by one thread in
a fixed order (float64 accumulators), so results are bit-identical at any thread count. The
normalised input is not stored: :func:`batch_norm` returns the statistics it used and
:func:`batch_norm_backward` recomputes ``x_hat = (x - mean) * inv_std`` from ``x``.
"""

import numbers

import numpy as np

from .._checks import check_given, check_shape, float_arrays
from .._kernels import norm as _norm
from .._norm_kernels import (dropout, dropout_backward, local_response_norm,
                             local_response_norm_backward)
from ._common import _threads

__all__ = ["batch_norm", "batch_norm_backward", "local_response_norm",
           "local_response_norm_backward", "dropout", "dropout_backward", "add_relu"]


def _as3d(a):
    """(N, C, *spatial) -> (N, C, S) view (S = 1 for (N, C))."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _number(where, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _bn_input(where, x):
    if x.ndim < 2:
        raise ValueError(f"{where}: x must be (N, C) or (N, C, *spatial), got shape {x.shape}")
    return x.shape[1]


def _running(where, name, a, c, training):
    """A running-statistics array: a float ndarray of shape (C,), written in place when
    training (so it is neither cast nor copied)."""
    if a is None:
        if training:
            return None
        raise TypeError(f"{where}: {name} is required in eval mode (an array of shape "
                        f"({c},)), got None")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where}: {name} must be a numpy array (it is updated in place), "
                        f"got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{where}: {name} must be a float array, got dtype {a.dtype}")
    check_shape(where, name, a, (c,))
    if training and not a.flags.writeable:
        raise ValueError(f"{where}: {name} must be writeable (it is updated in place)")
    return a


def _bn_threads(n_threads, where, c, *arrays):
    return _threads(n_threads, where, c, nbytes=sum(a.nbytes for a in arrays))


def batch_norm(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1,
               eps=1e-5, n_threads=None):
    """Batch normalisation over every axis but the channel axis 1 of ``x`` ``(N, C)`` or
    ``(N, C, *spatial)``: ``y = gamma * (x - mean) * inv_std + beta``.

    In training mode the batch statistics (biased variance) normalise ``x`` and
    ``running_mean`` / ``running_var`` are updated in place, as in PyTorch:
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased variance
    (either may be None: not tracked). In eval mode the running statistics normalise ``x``.

    Returns
    -------
    y : ndarray, the shape and dtype of ``x``
    mean : ndarray ``(C,)``
        The mean used (the batch mean in training, ``running_mean`` in eval mode).
    inv_std : ndarray ``(C,)``
        ``1 / sqrt(var + eps)`` of the variance used.

    ``(x, mean, inv_std)`` are what :func:`batch_norm_backward` needs.
    """
    where = "batch_norm"
    check_given(where, "x", x)
    x, gamma, beta = float_arrays(where, x=x, gamma=gamma, beta=beta)
    c = _bn_input(where, x)
    check_shape(where, "gamma", gamma, (c,))
    check_shape(where, "beta", beta, (c,))
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{where}: training must be a bool, got {training!r}")
    momentum = _number(where, "momentum", momentum)
    eps = _number(where, "eps", eps)
    if eps <= 0:
        raise ValueError(f"{where}: eps must be > 0, got {eps}")
    running_mean = _running(where, "running_mean", running_mean, c, training)
    running_var = _running(where, "running_var", running_var, c, training)
    dt = x.dtype
    m = x.size // c if c else 0
    y = np.empty_like(x)
    if training:
        if m < 2:
            raise ValueError(f"{where}: training needs more than 1 value per channel, got "
                             f"input shape {x.shape}")
        mean_d = np.empty(c)
        var_d = np.empty(c)
        mean = np.empty(c, dt)
        inv_std = np.empty(c, dt)
        threads = _bn_threads(n_threads, where, c, x, y)
        _norm.batch_norm_train(_as3d(x), gamma, beta, _as3d(y), mean_d, var_d, mean, inv_std,
                               eps, threads)
        if running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean_d
        if running_var is not None:
            running_var *= 1.0 - momentum
            running_var += (momentum * m / (m - 1)) * var_d
        return y, mean, inv_std
    mean = running_mean.astype(dt)
    inv_std = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(dt)
    if m:
        threads = _bn_threads(n_threads, where, x.shape[0] * c, x, y)  # (sample, channel) rows
        _norm.batch_norm_apply(_as3d(x), mean, gamma * inv_std, beta, _as3d(y), False, threads)
    return y, mean, inv_std


def batch_norm_backward(grad_out, x, mean, inv_std, gamma, training=True, n_threads=None):
    """Gradients of :func:`batch_norm` given its input ``x`` and the ``mean`` and ``inv_std``
    it returned: ``(grad_x, grad_gamma, grad_beta)``.

    With ``x_hat = (x - mean) * inv_std`` and ``M`` values per channel: training mode (the
    batch statistics depend on ``x``)
    ``grad_x = gamma * inv_std * (g - sum(g) / M - x_hat * sum(g * x_hat) / M)``; eval mode
    ``grad_x = g * gamma * inv_std``. ``grad_gamma = sum(g * x_hat)``, ``grad_beta = sum(g)``
    (sums over every axis but 1, in float64).
    """
    where = "batch_norm_backward"
    for name, a in (("grad_out", grad_out), ("x", x), ("mean", mean), ("inv_std", inv_std),
                    ("gamma", gamma)):
        check_given(where, name, a)
    grad_out, x, mean, inv_std, gamma = float_arrays(where, grad_out=grad_out, x=x, mean=mean,
                                                     inv_std=inv_std, gamma=gamma)
    c = _bn_input(where, x)
    check_shape(where, "grad_out", grad_out, x.shape)
    for name, a in (("mean", mean), ("inv_std", inv_std), ("gamma", gamma)):
        check_shape(where, name, a, (c,))
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{where}: training must be a bool, got {training!r}")
    gx = np.empty_like(x)
    g_gamma = np.zeros(c, x.dtype)
    g_beta = np.zeros(c, x.dtype)
    if x.size:
        threads = _bn_threads(n_threads, where, c, grad_out, x, gx)
        _norm.batch_norm_backward(_as3d(grad_out), _as3d(x), mean, inv_std, gamma,
                                  bool(training), _as3d(gx), g_gamma, g_beta, threads)
    return gx, g_gamma, g_beta


def batch_norm_relu_eval(x, scale, shift, mean, n_threads=None):
    """``max((x - mean[c]) * scale[c] + shift[c], 0)`` in one pass: an eval-mode BatchNorm
    followed by ReLU (``scale = gamma * inv_std``, ``shift = beta``). For fused inference
    layers; arguments are trusted to be C-contiguous arrays of x's dtype."""
    y = np.empty_like(x)
    if x.size:
        threads = _bn_threads(n_threads, "batch_norm_relu_eval", x.shape[0] * x.shape[1], x, y)
        _norm.batch_norm_apply(_as3d(x), mean, scale, shift, _as3d(y), True, threads)
    return y


def add_relu(a, b, out=None, n_threads=None):
    """``max(a + b, 0)`` in one pass (a residual connection and its ReLU). ``out`` (an array
    of the shape and dtype of ``a``, C-contiguous; it may be ``a`` or ``b``) receives the
    result; by default a new array."""
    where = "add_relu"
    check_given(where, "a", a)
    check_given(where, "b", b)
    a, b = float_arrays(where, a=a, b=b)
    check_shape(where, "b", b, a.shape)
    if out is None:
        out = np.empty_like(a)
    elif not (isinstance(out, np.ndarray) and out.dtype == a.dtype and out.shape == a.shape
              and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{where}: out must be a writeable C-contiguous {a.dtype} array of "
                         f"shape {a.shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    threads = _threads(n_threads, where, a.size, nbytes=a.nbytes * 3)
    _norm.add_relu(a.reshape(-1), b.reshape(-1), out.reshape(-1), threads)
    return out


def relu_(x, n_threads=None):
    """``x = max(x, 0)`` in place (``x`` a C-contiguous float32/float64 array, trusted); for
    fused inference layers. Returns ``x``."""
    threads = _threads(n_threads, "relu_", x.size, nbytes=x.nbytes * 2)
    _norm.relu_inplace(x.reshape(-1), threads)
    return x

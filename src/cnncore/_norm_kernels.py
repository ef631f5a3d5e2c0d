"""Vectorised NumPy kernels of the normalisation layers: batch normalisation, local response
normalisation (AlexNet's LRN, PyTorch's formula) and dropout, forward and backward.

:mod:`cnncore._norm_reference` holds obviously-correct twins with the same signatures; the
tests compare the two. Arrays are ``(N, C, *spatial)``; the output dtype is the input dtype.
Inputs follow the dtype rules of :mod:`cnncore.functional` (integer, bool and float16 arrays
are cast, complex and object arrays refused).
"""

import numpy as np

from ._checks import float_arrays

__all__ = ["batch_norm", "batch_norm_backward", "local_response_norm",
           "local_response_norm_backward", "dropout", "dropout_backward"]


def _channel_view(v, ndim):
    """``(C,)`` -> ``(1, C, 1, ...)`` broadcastable against an ``ndim``-D activation."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1,
               eps=1e-5):
    """Batch normalisation over every axis but the channel axis 1.

    In training mode the batch statistics normalise ``x`` and ``running_mean`` /
    ``running_var`` are updated in place:
    ``running = (1 - momentum) * running + momentum * batch`` (the variance unbiased, as in
    PyTorch). In eval mode the running statistics normalise ``x``.

    Returns
    -------
    y : ndarray
        ``gamma * x_hat + beta``.
    x_hat : ndarray
        The normalised input (needed by :func:`batch_norm_backward`).
    inv_std : ndarray ``(C,)``
        ``1 / sqrt(var + eps)`` of the statistics used.
    """
    x, gamma, beta = float_arrays("batch_norm", x=x, gamma=gamma, beta=beta)
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected an input (N, C, ...), got shape {x.shape}")
    axes = (0,) + tuple(range(2, x.ndim))
    if training:
        m = x.size // x.shape[1]
        if m < 2:
            raise ValueError(f"batch_norm: training needs more than 1 value per channel, got "
                             f"input shape {x.shape}")
        mean = x.mean(axis=axes)
        centred = x - _channel_view(mean, x.ndim)
        var = np.mean(np.square(centred), axis=axes)
        inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
        x_hat = np.multiply(centred, _channel_view(inv_std, x.ndim), out=centred)
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean
        running_var *= 1.0 - momentum
        running_var += (momentum * m / (m - 1)) * var
    else:
        inv_std = (1.0 / np.sqrt(running_var + eps)).astype(x.dtype)
        x_hat = (x - _channel_view(running_mean, x.ndim)) * _channel_view(inv_std, x.ndim)
    y = x_hat * _channel_view(gamma, x.ndim)
    y += _channel_view(beta, x.ndim)
    return y.astype(x.dtype, copy=False), x_hat.astype(x.dtype, copy=False), inv_std


def batch_norm_backward(grad_out, x_hat, inv_std, gamma, training=True):
    """Gradients of :func:`batch_norm`: returns ``(grad_x, grad_gamma, grad_beta)``.

    Training mode (batch statistics depend on ``x``), with ``M`` values per channel:
    ``grad_x = gamma * inv_std / M * (M * g - sum(g) - x_hat * sum(g * x_hat))``.
    Eval mode: ``grad_x = g * gamma * inv_std``.
    """
    grad_out, x_hat, inv_std, gamma = float_arrays("batch_norm_backward", grad_out=grad_out,
                                                   x_hat=x_hat, inv_std=inv_std, gamma=gamma)
    nd = grad_out.ndim
    axes = (0,) + tuple(range(2, nd))
    grad_beta = grad_out.sum(axis=axes)
    grad_gamma = np.sum(grad_out * x_hat, axis=axes)
    scale = _channel_view(gamma * inv_std, nd)
    if training:
        m = grad_out.size // grad_out.shape[1]
        gx = x_hat * _channel_view(grad_gamma / m, nd)
        gx += _channel_view(grad_beta / m, nd)
        np.subtract(grad_out, gx, out=gx)
        gx *= scale
    else:
        gx = grad_out * scale
    dt = grad_out.dtype
    return gx.astype(dt, copy=False), grad_gamma.astype(dt, copy=False), grad_beta.astype(dt, copy=False)


def _window_sum(a, before, after):
    """``s[:, c] = sum(a[:, c - before : c + after + 1])`` along axis 1, zero outside."""
    c = a.shape[1]
    pad = [(0, 0)] * a.ndim
    pad[1] = (before + 1, after)
    cs = np.cumsum(np.pad(a, pad), axis=1)
    w = before + after + 1
    return cs[:, w:w + c] - cs[:, :c]


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """PyTorch's LRN across channels:
    ``y_c = x_c / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x_c'^2) ** beta``
    (channels outside ``[0, C)`` count as zeros)."""
    x = float_arrays("local_response_norm", x=x)
    if x.ndim < 3:
        raise ValueError(f"local_response_norm: expected an input (N, C, ...), got {x.shape}")
    d = _window_sum(np.square(x), size // 2, (size - 1) // 2)
    d *= alpha / size
    d += k
    return (x * d ** -beta).astype(x.dtype, copy=False)


def local_response_norm_backward(grad_out, x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Gradient of :func:`local_response_norm` with respect to ``x``:
    ``g_j D_j^-beta - 2 alpha beta / size * x_j * sum_{c : j in window(c)} g_c x_c D_c^(-beta-1)``
    with ``D_c = k + alpha / size * S_c``."""
    grad_out, x = float_arrays("local_response_norm_backward", grad_out=grad_out, x=x)
    d = _window_sum(np.square(x), size // 2, (size - 1) // 2)
    d *= alpha / size
    d += k
    d_beta = d ** -beta
    t = grad_out * x * d_beta / d
    # j is in the window of c when c - size//2 <= j <= c + (size-1)//2.
    back = _window_sum(t, (size - 1) // 2, size // 2)
    gx = grad_out * d_beta - (2.0 * alpha * beta / size) * x * back
    return gx.astype(x.dtype, copy=False)


def dropout(x, p, rng, training=True):
    """Inverted dropout: zero each element with probability ``p`` and scale the others by
    ``1 / (1 - p)``; the identity when not training (or ``p == 0``).

    ``rng`` (a Generator) draws ``rng.random(x.shape)`` in the dtype of ``x`` (float32 or
    float64); an element is kept when its draw is ``>= p``.

    Returns
    -------
    y : ndarray
    mask : ndarray or None
        The scaled keep mask (``0`` or ``1 / (1 - p)``), needed by :func:`dropout_backward`;
        None when nothing was dropped.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    x = float_arrays("dropout", x=x)
    if not training or p == 0.0:
        return x, None
    u = rng.random(x.shape, dtype=x.dtype)
    mask = (u >= p).astype(x.dtype)
    mask *= 1.0 / (1.0 - p)
    return x * mask, mask


def dropout_backward(grad_out, mask):
    """Gradient of :func:`dropout`: ``grad_out * mask`` (``grad_out`` when mask is None)."""
    grad_out, mask = float_arrays("dropout_backward", grad_out=grad_out, mask=mask)
    if mask is None:
        return grad_out
    return grad_out * mask

"""Vectorised NumPy kernels of local response normalisation (AlexNet's LRN, PyTorch's
formula) and dropout, forward and backward (batch normalisation is compiled:
:mod:`cnncore._kernels.norm`, called through :mod:`cnncore.functional.norm`).

:mod:`cnncore._norm_reference` holds obviously-correct twins with the same signatures; the
tests compare the two. Arrays are ``(N, C, *spatial)``; the output dtype is the input dtype.
Inputs follow the dtype rules of :mod:`cnncore.functional` (integer, bool and float16 arrays
are cast, complex and object arrays refused).
"""

import numpy as np

from ._checks import float_arrays

__all__ = ["local_response_norm", "local_response_norm_backward", "dropout",
           "dropout_backward"]


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

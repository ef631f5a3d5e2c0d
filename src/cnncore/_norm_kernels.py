"""Local response normalisation (AlexNet's LRN, PyTorch's formula; compiled:
:mod:`cnncore._kernels.lrn`) and dropout (vectorised NumPy), forward and backward (batch
normalisation is compiled too: :mod:`cnncore._kernels.norm`, called through
:mod:`cnncore.functional.norm`).

:mod:`cnncore._norm_reference` holds obviously-correct twins with the same signatures; the
tests compare the two. Arrays are ``(N, C, *spatial)``; the output dtype is the input dtype.
Inputs follow the dtype rules of :mod:`cnncore.functional` (integer, bool and float16 arrays
are cast, complex and object arrays refused).
"""

import numpy as np

from ._checks import float_arrays
from ._kernels import lrn as _lrn
from .functional._common import _scratch_array, _threads

__all__ = ["local_response_norm", "local_response_norm_backward", "dropout",
           "dropout_backward"]


def _lrn_args(where, x, size, alpha, beta, k):
    if x.ndim < 3:
        raise ValueError(f"{where}: expected an input (N, C, ...), got {x.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{where}: size must be a positive int, got {size!r}")
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    return int(size), float(alpha), float(beta), float(k)


def _as_ncs(x):
    """``x`` (N, C, ...) as a C-contiguous (N, C, S) array."""
    return np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)


def _lrn_threads(n_threads, where, x3, size, passes):
    """Threads for the LRN kernels on ``x3`` (N, C, S): tasks are (sample, block of pixels);
    each pass reads the ``size`` channels of a window."""
    tasks = x3.shape[0] * -(-x3.shape[2] // _lrn.block())
    return _threads(n_threads, where, tasks, nbytes=x3.nbytes * passes * size)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, n_threads=None):
    """PyTorch's LRN across channels:
    ``y_c = x_c / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x_c'^2) ** beta``
    (channels outside ``[0, C)`` count as zeros)."""
    where = "local_response_norm"
    x = float_arrays(where, x=x)
    size, alpha, beta, k = _lrn_args(where, x, size, alpha, beta, k)
    y = np.empty(x.shape, dtype=x.dtype)
    if x.size:
        x3 = _as_ncs(x)
        _lrn.lrn_forward(x3, y.reshape(x3.shape), size, alpha, beta, k,
                         _lrn_threads(n_threads, where, x3, size, 1))
    return y


def local_response_norm_backward(grad_out, x, size, alpha=1e-4, beta=0.75, k=1.0,
                                 n_threads=None):
    """Gradient of :func:`local_response_norm` with respect to ``x``:
    ``g_j D_j^-beta - 2 alpha beta / size * x_j * sum_{c : j in window(c)} g_c x_c D_c^(-beta-1)``
    with ``D_c = k + alpha / size * S_c``."""
    where = "local_response_norm_backward"
    grad_out, x = float_arrays(where, grad_out=grad_out, x=x)
    size, alpha, beta, k = _lrn_args(where, x, size, alpha, beta, k)
    if grad_out.shape != x.shape:
        raise ValueError(f"{where}: grad_out has shape {grad_out.shape}, expected {x.shape}")
    gx = np.empty(x.shape, dtype=x.dtype)
    if x.size:
        x3 = _as_ncs(x)
        threads = _lrn_threads(n_threads, where, x3, size, 2)
        work = _scratch_array("lrn", (threads, 2 * x.shape[1] * _lrn.block()), np.float64)
        _lrn.lrn_backward(_as_ncs(grad_out), x3, gx.reshape(x3.shape), work, size, alpha,
                          beta, k, threads)
    return gx


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

"""NumPy twin of every kernel in :mod:`cnncore.functional`.

Same names and signatures as the compiled kernels, written to be obviously correct rather
than fast: windows come from :func:`numpy.lib.stride_tricks.sliding_window_view`, products
from :func:`numpy.einsum`. Tests compare the compiled kernels with these functions, and the
profiler (``python -m cnncore.bench``) times them side by side.

Conventions: NCHW activations, weights ``(C_out, C_in // groups, kH, kW)``,
cross-correlation (the kernel is not flipped), output dtype = input dtype.
The ``n_threads`` argument is accepted for signature compatibility and ignored.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import expit

from ._api import KERNELS, NORM_KERNELS
from ._args import conv1d_as_2d, conv_padding, out_size, pair, pool_geometry
from ._norm_reference import (  # noqa: F401  (re-exported)
    add_relu, batch_norm, batch_norm_backward, dropout, dropout_backward,
    local_response_norm, local_response_norm_backward)

__all__ = list(KERNELS + NORM_KERNELS)


# ----------------------------------------------------------------------------- convolution

def _conv_geometry(x, weight, stride, padding, dilation, where):
    kh, kw = weight.shape[2:]
    sh, sw = pair(stride, "stride", minimum=1, where=where)
    dh, dw = pair(dilation, "dilation", minimum=1, where=where)
    ph, pw = conv_padding(padding, (kh, kw), (dh, dw), where=where)
    ho = out_size(x.shape[2], kh, sh, ph, dh, where=where, axis="H")
    wo = out_size(x.shape[3], kw, sw, pw, dw, where=where, axis="W")
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo)


def _windows(xp, k, s, d, o):
    """View ``(N, C, Ho, Wo, kh, kw)`` of the padded input: window (i, j) of output (h, w)
    is ``xp[..., h*sh + i*dh, w*sw + j*dw]``."""
    span = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    v = sliding_window_view(xp, span, axis=(2, 3))
    return v[:, :, ::s[0], ::s[1], ::d[0], ::d[1]][:, :, :o[0], :o[1]]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, n_threads=None):
    """2-D cross-correlation: ``y[n, o] = b[o] + sum_c,i,j w[o, c, i, j] * x[n, c, h*s+i*d, ...]``."""
    k, s, p, d, o = _conv_geometry(x, weight, stride, padding, dilation, "conv2d")
    n, c = x.shape[:2]
    c_out = weight.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    win = _windows(xp, k, s, d, o).reshape(n, groups, c // groups, o[0], o[1], k[0], k[1])
    wg = weight.reshape(groups, c_out // groups, c // groups, k[0], k[1])
    y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(n, c_out, o[0], o[1])
    if bias is not None:
        y = y + bias.reshape(1, c_out, 1, 1)
    return np.ascontiguousarray(y, dtype=x.dtype)


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    n_threads=None, need_grad_x=True):
    """Gradients of :func:`conv2d`: returns ``(grad_x, grad_weight, grad_bias)``, with None
    for ``grad_x`` if ``need_grad_x`` is false."""
    k, s, p, d, o = _conv_geometry(x, weight, stride, padding, dilation, "conv2d_backward")
    n, c, h, w = x.shape
    c_out = weight.shape[0]
    g, cg, og = groups, c // groups, c_out // groups
    dy = grad_out.reshape(n, g, og, o[0], o[1])
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    win = _windows(xp, k, s, d, o).reshape(n, g, cg, o[0], o[1], k[0], k[1])
    grad_weight = np.einsum("ngohw,ngchwij->gocij", dy, win, optimize=True)
    grad_bias = grad_out.sum(axis=(0, 2, 3))
    if not need_grad_x:
        return None, grad_weight.reshape(weight.shape).astype(x.dtype), grad_bias.astype(x.dtype)
    # Each kernel tap (i, j) sends dy back to the input pixels it read.
    wg = weight.reshape(g, og, cg, k[0], k[1])
    dxp = np.zeros_like(xp)
    for i in range(k[0]):
        for j in range(k[1]):
            contrib = np.einsum("ngohw,goc->ngchw", dy, wg[..., i, j], optimize=True)
            rows = slice(i * d[0], i * d[0] + s[0] * (o[0] - 1) + 1, s[0])
            cols = slice(j * d[1], j * d[1] + s[1] * (o[1] - 1) + 1, s[1])
            dxp[:, :, rows, cols] += contrib.reshape(n, c, o[0], o[1])
    grad_x = dxp[:, :, p[0]:p[0] + h, p[1]:p[1] + w]
    return (np.ascontiguousarray(grad_x, dtype=x.dtype),
            grad_weight.reshape(weight.shape).astype(x.dtype),
            grad_bias.astype(x.dtype))


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, n_threads=None):
    """1-D cross-correlation on ``(N, C, L)`` with weights ``(C_out, C_in // groups, k)``."""
    s, p, d = conv1d_as_2d(stride, padding, dilation, where="conv1d")
    y = conv2d(x[:, :, None, :], weight[:, :, None, :], bias, s, p, d, groups)
    return y[:, :, 0, :]


def conv1d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    n_threads=None, need_grad_x=True):
    """Gradients of :func:`conv1d`: returns ``(grad_x, grad_weight, grad_bias)``, with None
    for ``grad_x`` if ``need_grad_x`` is false."""
    s, p, d = conv1d_as_2d(stride, padding, dilation, where="conv1d_backward")
    gx, gw, gb = conv2d_backward(grad_out[:, :, None, :], x[:, :, None, :],
                                 weight[:, :, None, :], s, p, d, groups,
                                 need_grad_x=need_grad_x)
    return (None if gx is None else gx[:, :, 0, :]), gw[:, :, 0, :], gb


# ----------------------------------------------------------------------------- pooling

def _pool_geometry(x, kernel_size, stride, padding, where):
    return pool_geometry(x.shape[2], x.shape[3], kernel_size, stride, padding, where=where)


def _window_argmax(x, k, s, p, o):
    """Flat index ``h*W + w`` into the input plane of each window's argmax, ``(N, C, Ho, Wo)``:
    the first NaN of the window if it has one, else the first maximum in row-major window
    order; padded cells never win (a window of -inf picks its first real cell)."""
    n, c, h, w = x.shape
    pad = ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1]))
    win = _windows(np.pad(x, pad, constant_values=-np.inf), k, s, (1, 1), o)
    win = win.reshape(n, c, o[0], o[1], k[0] * k[1])
    real = _windows(np.pad(np.ones((1, 1, h, w), dtype=bool), pad), k, s, (1, 1), o)
    real = real.reshape(1, 1, o[0], o[1], k[0] * k[1])
    nan = np.isnan(win)
    is_max = real & (win == win.max(axis=-1, keepdims=True))
    tap = np.where(nan.any(axis=-1, keepdims=True), nan, is_max).argmax(axis=-1)  # first True
    rows = np.arange(o[0])[:, None] * s[0] - p[0] + tap // k[1]
    cols = np.arange(o[1])[None, :] * s[1] - p[1] + tap % k[1]
    return (rows * w + cols).astype(np.int64)


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False, n_threads=None):
    """Max over each ``kernel_size`` window; padded cells never win (they are -inf). With
    ``return_indices``, also the flat index ``h*W + w`` of each window's argmax (int64)."""
    k, s, p, o = _pool_geometry(x, kernel_size, stride, padding, "max_pool2d")
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=-np.inf)
    y = np.ascontiguousarray(_windows(xp, k, s, (1, 1), o).max(axis=(4, 5)))
    if return_indices:
        return y, _window_argmax(x, k, s, p, o)
    return y


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, indices=None,
                        n_threads=None):
    """Add each output gradient at its window's argmax (ties: the first in row-major order),
    taken from ``indices`` if given (then only the shape and dtype of ``x`` are used)."""
    k, s, p, o = _pool_geometry(x, kernel_size, stride, padding, "max_pool2d_backward")
    n, c, h, w = x.shape
    if indices is None:
        indices = _window_argmax(x, k, s, p, o)
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"max_pool2d_backward: indices must be integers, got {indices.dtype}")
    if indices.shape != grad_out.shape:
        raise ValueError(f"max_pool2d_backward: indices must have shape {grad_out.shape}, got "
                         f"{indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= h * w):
        raise ValueError(f"max_pool2d_backward: indices must be in [0, {h * w})")
    planes = np.arange(n * c)[:, None]
    grad_x = np.zeros((n * c, h * w), dtype=x.dtype)
    per_plane = o[0] * o[1]  # (not -1: an empty batch has no size to infer it from)
    np.add.at(grad_x, (planes, indices.reshape(n * c, per_plane)),
              grad_out.reshape(n * c, per_plane))
    return grad_x.reshape(x.shape)


def _avg_counts(x, k, s, p, o, count_include_pad):
    if count_include_pad:
        return np.full(o, k[0] * k[1], dtype=x.dtype)
    ones = np.pad(np.ones(x.shape[2:], dtype=x.dtype), ((p[0], p[0]), (p[1], p[1])))
    return _windows(ones[None, None], k, s, (1, 1), o).sum(axis=(4, 5))[0, 0]


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True, n_threads=None):
    """Mean over each window; padded zeros count in the divisor only if ``count_include_pad``."""
    k, s, p, o = _pool_geometry(x, kernel_size, stride, padding, "avg_pool2d")
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    total = _windows(xp, k, s, (1, 1), o).sum(axis=(4, 5))
    return np.ascontiguousarray(total / _avg_counts(x, k, s, p, o, count_include_pad),
                                dtype=x.dtype)


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0,
                        count_include_pad=True, n_threads=None):
    """Spread each output gradient evenly over its window; overlapping windows add up."""
    k, s, p, o = _pool_geometry(x, kernel_size, stride, padding, "avg_pool2d_backward")
    h, w = x.shape[2:]
    share = grad_out / _avg_counts(x, k, s, p, o, count_include_pad)
    dxp = np.zeros((x.shape[0], x.shape[1], h + 2 * p[0], w + 2 * p[1]), dtype=x.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            dxp[:, :, i:i + s[0] * (o[0] - 1) + 1:s[0], j:j + s[1] * (o[1] - 1) + 1:s[1]] += share
    return np.ascontiguousarray(dxp[:, :, p[0]:p[0] + h, p[1]:p[1] + w])


def global_avg_pool2d(x, n_threads=None):
    """Mean over H and W: ``(N, C, H, W) -> (N, C)``."""
    return x.mean(axis=(2, 3), dtype=x.dtype)


def global_avg_pool2d_backward(grad_out, x, n_threads=None):
    """Each pixel receives ``grad_out[n, c] / (H * W)``."""
    h, w = x.shape[2:]
    return np.ascontiguousarray(
        np.broadcast_to(grad_out[:, :, None, None] / (h * w), x.shape), dtype=x.dtype)


# ----------------------------------------------------------------------------- activations

def relu(x, n_threads=None):
    return np.maximum(x, 0).astype(x.dtype)


def relu_backward(grad_out, x, n_threads=None):
    return np.where(x > 0, grad_out, 0).astype(x.dtype)


def leaky_relu(x, negative_slope=0.01, n_threads=None):
    return np.where(x > 0, x, x * negative_slope).astype(x.dtype)


def leaky_relu_backward(grad_out, x, negative_slope=0.01, n_threads=None):
    return np.where(x > 0, grad_out, grad_out * negative_slope).astype(x.dtype)


def sigmoid(x, n_threads=None):
    return expit(x).astype(x.dtype)


def sigmoid_backward(grad_out, x, n_threads=None):
    s = expit(x)
    return (grad_out * s * (1 - s)).astype(x.dtype)


def tanh(x, n_threads=None):
    return np.tanh(x)


def tanh_backward(grad_out, x, n_threads=None):
    return (grad_out * (1 - np.tanh(x) ** 2)).astype(x.dtype)


# ----------------------------------------------------------------------------- dense & losses

def linear(x, weight, bias=None, n_threads=None):
    """``y = x @ weight.T + bias`` with ``weight`` of shape (out, in)."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def linear_backward(grad_out, x, weight, n_threads=None):
    """Returns ``(grad_x, grad_weight, grad_bias)`` of :func:`linear`."""
    return grad_out @ weight, grad_out.T @ x, grad_out.sum(axis=0)


def softmax(x, axis=-1, n_threads=None):
    """Softmax along ``axis``, shifted by the maximum for stability."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _targets(labels, logits):
    if labels.ndim == 1:
        t = np.zeros_like(logits)
        t[np.arange(len(labels)), labels] = 1
        return t
    return labels.astype(logits.dtype)


def softmax_cross_entropy(logits, labels, n_threads=None):
    """Mean over the batch of ``-sum_k t_k log softmax(z)_k``; returns ``(loss, grad_logits)``
    with ``grad_logits = (softmax(z) - t) / N``. ``labels`` are class indices or one-hot rows."""
    n = logits.shape[0]
    t = _targets(labels, logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -(t * log_p).sum() / n
    return logits.dtype.type(loss), ((np.exp(log_p) - t) / n).astype(logits.dtype)


def mse_loss(pred, target, n_threads=None):
    """The course's ``E = 1/(2N) sum_n sum_j (y - yhat)^2``; returns ``(loss, grad_pred)``."""
    diff = pred - target
    n = pred.shape[0]
    return pred.dtype.type((diff * diff).sum() / (2 * n)), (diff / n).astype(pred.dtype)

"""Fully connected layers, softmax and the losses."""

import numpy as np

from .._checks import check_blas_size, check_given, check_int, check_ndim, check_shape, float_arrays
from .._kernels import _blas
from .._kernels import activations as _act
from .._kernels import dense as _dense
from ._common import _one_blas_thread, _threads

__all__ = ["linear", "linear_backward", "softmax", "softmax_cross_entropy", "mse_loss"]


def _linear_inputs(where, x, weight, bias=None, grad_out=None):
    x, weight, bias, grad_out = float_arrays(where, x=x, weight=weight, bias=bias,
                                             grad_out=grad_out)
    check_ndim(where, "x", x, 2, "(N, in_features)")
    check_ndim(where, "weight", weight, 2, "(out_features, in_features)")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{where}: x has {x.shape[1]} features (shape {x.shape}) but weight "
                         f"{weight.shape} expects {weight.shape[1]}")
    if min(weight.shape) < 1:
        raise ValueError(f"{where}: weight must have no empty dimension, got {weight.shape}")
    if bias is not None:
        check_shape(where, "bias", bias, (weight.shape[0],))
    if grad_out is not None:
        check_shape(where, "grad_out", grad_out, (x.shape[0], weight.shape[0]))
    check_blas_size(where, x.size, weight.size, x.shape[0] * weight.shape[0])
    return x, weight, bias, grad_out


def _linear_threads(n_threads, where, x, weight):
    return _threads(n_threads, where, x.shape[0] + weight.shape[0],
                    flops=2 * x.shape[0] * x.shape[1] * weight.shape[0])


def linear(x, weight, bias=None, n_threads=None):
    """Fully connected layer ``y = x @ weight.T + bias``.

    Parameters
    ----------
    x : ndarray, shape (N, in_features)
    weight : ndarray, shape (out_features, in_features)
    bias : ndarray, shape (out_features,), optional
    """
    where = "linear"
    x, weight, bias, _ = _linear_inputs(where, x, weight, bias=bias)
    y = np.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
    if x.shape[0]:
        b = bias if bias is not None else np.empty(0, dtype=x.dtype)
        with _one_blas_thread():
            _dense.linear_forward(x, weight, b, y, _linear_threads(n_threads, where, x, weight))
    return y


def linear_backward(grad_out, x, weight, n_threads=None):
    """Gradients of :func:`linear`: ``(grad_x, grad_weight, grad_bias)``."""
    where = "linear_backward"
    check_given(where, "grad_out", grad_out)
    x, weight, _, grad_out = _linear_inputs(where, x, weight, grad_out=grad_out)
    grad_x = np.empty_like(x)
    if not x.shape[0]:
        return grad_x, np.zeros_like(weight), np.zeros(weight.shape[0], dtype=x.dtype)
    grad_weight = np.empty_like(weight)  # every element written by the kernel
    grad_bias = np.empty(weight.shape[0], dtype=x.dtype)
    with _one_blas_thread():
        _dense.linear_backward(grad_out, x, weight, grad_x, grad_weight, grad_bias,
                               _linear_threads(n_threads, where, x, weight), False,
                               _packed_weight_grad(x))
    return grad_x, grad_weight, grad_bias


def _packed_weight_grad(x):
    """The weight gradient of a small batch by the packed GEMM (see
    _kernels/dense.pyx, _grad_weight_block) where it runs (_blas.PACKED)."""
    return _blas.PACKED and x.shape[0] <= _dense.MAX_PACKED_BATCH


def linear_backward_into(grad_out, x, weight, grad_weight, grad_bias=None, n_threads=None):
    """:func:`linear_backward` that adds the weight and bias gradients into
    ``grad_weight`` and ``grad_bias`` (a layer's accumulated gradients: no separate pass
    over them) and returns ``grad_x``. ``grad_bias`` None: not computed."""
    where = "linear_backward"
    check_given(where, "grad_out", grad_out)
    x, weight, _, grad_out = _linear_inputs(where, x, weight, grad_out=grad_out)
    if not all(a is None or (isinstance(a, np.ndarray) and a.dtype == x.dtype
                             and a.shape == shape and a.flags.c_contiguous
                             and a.flags.writeable)
               for a, shape in ((grad_weight, weight.shape), (grad_bias, weight.shape[:1]))):
        # not arrays the kernel can add into (a gradient the user replaced): add as NumPy does
        grad_x, gw, gb = linear_backward(grad_out, x, weight, n_threads)
        grad_weight += gw
        if grad_bias is not None:
            grad_bias += gb
        return grad_x
    grad_x = np.empty_like(x)
    if x.shape[0]:
        db = grad_bias if grad_bias is not None else np.zeros(weight.shape[0], dtype=x.dtype)
        with _one_blas_thread():
            _dense.linear_backward(grad_out, x, weight, grad_x, grad_weight, db,
                                   _linear_threads(n_threads, where, x, weight), True,
                                   _packed_weight_grad(x))
    return grad_x


def softmax(x, axis=-1, n_threads=None):
    """Softmax along ``axis`` (shifted by the maximum, so large inputs do not overflow)."""
    where = "softmax"
    x = float_arrays(where, x=x)
    if x.ndim == 0:
        raise ValueError(f"{where}: x must have at least one dimension, got shape {x.shape}")
    axis = check_int(where, "axis", axis, -x.ndim)
    if axis >= x.ndim:
        raise ValueError(f"{where}: axis {axis} is out of range for shape {x.shape}")
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    if moved.size == 0:
        return np.empty_like(x)
    rows = moved.reshape(-1, moved.shape[-1])
    out = np.empty_like(rows)
    _act.softmax_rows(rows, out, _threads(n_threads, where, rows.shape[0], nbytes=rows.nbytes))
    return np.ascontiguousarray(np.moveaxis(out.reshape(moved.shape), -1, axis))


def softmax_cross_entropy(logits, labels, n_threads=None):
    """Fused, numerically stable softmax + cross-entropy, averaged over the batch.

    Parameters
    ----------
    logits : ndarray, shape (N, K)
    labels : ndarray
        Integer class indices of shape (N,) in ``[0, K)``, or target rows of shape (N, K)
        (one-hot or probabilities, of the dtype of ``logits``; integer rows are cast).

    Returns
    -------
    loss : float32 or float64 scalar
        ``mean_n( -sum_k t_nk log softmax(z_n)_k )``.
    grad_logits : ndarray, shape (N, K)
        ``(softmax(z) - t) / N``.
    """
    where = "softmax_cross_entropy"
    logits = float_arrays(where, logits=logits)
    check_ndim(where, "logits", logits, 2, "(N, K)")
    n, k = logits.shape
    if k < 1:
        raise ValueError(f"{where}: logits need at least one class, got shape {logits.shape}")
    labels = np.asarray(labels)
    grad = np.empty_like(logits)
    row_loss = np.empty(n, dtype=np.float64)
    threads = _threads(n_threads, where, n, nbytes=logits.nbytes)
    if labels.ndim == 1 and labels.dtype.kind in "iu":
        check_shape(where, "labels", labels, (n,))
        if n and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"{where}: labels must be in [0, {k}), got values from "
                             f"{labels.min()} to {labels.max()}")
        if n:
            _act.softmax_xent_index(logits, np.ascontiguousarray(labels, dtype=np.int64), grad,
                                    row_loss, threads)
    elif labels.ndim == 2 and labels.dtype.kind in "fiub":
        logits, labels = float_arrays(where, logits=logits, labels=labels)
        check_shape(where, "labels", labels, logits.shape)
        if n:
            _act.softmax_xent_dense(logits, labels, grad, row_loss, threads)
    else:
        raise TypeError(f"{where}: labels must be integer class indices of shape ({n},) or "
                        f"target rows of shape {logits.shape}, got dtype {labels.dtype} and "
                        f"shape {labels.shape}")
    loss = _act.ordered_sum(row_loss) / n if n else float("nan")
    return logits.dtype.type(loss), grad


def mse_loss(pred, target, n_threads=None):
    """The course's squared error ``E = 1/(2N) sum_n sum_j (pred - target)^2``.

    ``N`` is ``pred.shape[0]``; the features of each sample (all other axes) are summed.
    Returns ``(loss, grad_pred)`` with ``grad_pred = (pred - target) / N``.
    """
    where = "mse_loss"
    pred, target = float_arrays(where, pred=pred, target=target)
    if pred.ndim == 0:
        raise ValueError(f"{where}: pred must have a batch dimension, got shape {pred.shape}")
    check_shape(where, "target", target, pred.shape)
    n = pred.shape[0]
    grad = np.empty_like(pred)
    if pred.size == 0:  # no samples: undefined mean; samples without features: zero error
        return pred.dtype.type(0.0 if n else float("nan")), grad
    row_sq = np.empty(n, dtype=np.float64)
    _act.mse_rows(pred.reshape(n, -1), target.reshape(n, -1), grad.reshape(n, -1), row_sq,
                  _threads(n_threads, where, n, nbytes=pred.nbytes))
    return pred.dtype.type(_act.ordered_sum(row_sq) / (2 * n)), grad

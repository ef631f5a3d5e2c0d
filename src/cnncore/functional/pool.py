"""Pooling: max and average windows, global average, and their gradients."""

import numpy as np

from .._args import pool_geometry
from .._checks import check_given, check_ndim, check_shape, float_arrays, index_array
from .._kernels import pool as _pool
from ._common import _MIN_POOL_BYTES_PER_THREAD, _threads, _typed, cached_geometry

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "global_avg_pool2d", "global_avg_pool2d_backward"]


def _pool_inputs(where, x, kernel_size, stride, padding, grad_out=None, copy_x=True):
    """Checked arrays and geometry of a pooling call. With ``copy_x=False`` only the shape
    and dtype of x are used (backward with saved indices): x is neither cast nor copied,
    so any view of the right shape and dtype will do."""
    if copy_x:
        x, grad_out = float_arrays(where, x=x, grad_out=grad_out)
    else:
        x = np.asarray(x)
    check_ndim(where, "x", x, 4, "(N, C, H, W)")
    if not copy_x:
        _, grad_out = float_arrays(where, x=x[:0], grad_out=grad_out)  # dtype rules only
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{where}: x must have no empty channel or spatial dimension, "
                         f"got {x.shape}")
    args, o = _pool_geometry(where, x.shape[2], x.shape[3], kernel_size, stride, padding)
    if grad_out is not None:
        check_shape(where, "grad_out", grad_out, (*x.shape[:2], *o))
    return x, grad_out, args, o


def _pool_geometry(where, h, w, kernel_size, stride, padding):
    """Kernel arguments ``(kh, kw, sh, sw, ph, pw)`` and output size of a pooling window,
    parsed once per distinct call (as _conv_geometry): a layer repeats them every step."""
    def parse():
        k, s, p, o = pool_geometry(h, w, kernel_size, stride, padding, where=where)
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:
            raise ValueError(f"{where}: padding {p} must be at most half the kernel size {k}")
        return (*k, *s, *p), o

    key = ("pool", where, h, w) + _typed((kernel_size, stride, padding))
    try:
        hash(key)
    except TypeError:  # unhashable arguments: parsed (and rejected) without the cache
        return parse()
    return cached_geometry(key, parse)


def _pool_threads(n_threads, where, x, *arrays):
    """Threads for a window-pooling call on x (N, C, H, W) that also reads or writes
    ``arrays``: one task per plane, work by bytes touched (see _MIN_POOL_BYTES_PER_THREAD)."""
    return _threads(n_threads, where, x.shape[0] * x.shape[1],
                    nbytes=x.nbytes + sum(a.nbytes for a in arrays),
                    bytes_per_thread=_MIN_POOL_BYTES_PER_THREAD)


def _planes(a):
    """(N, C, H, W) -> (N*C, H, W) view."""
    return a.reshape(-1, a.shape[2], a.shape[3])


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False, n_threads=None):
    """Max pooling over ``kernel_size`` windows (``stride=None`` means stride = kernel_size);
    ``padding`` (at most half the kernel) is never selected.

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
    indices : ndarray of int64, shape (N, C, Ho, Wo)
        Only with ``return_indices=True``: the flat index ``h*W + w`` of each window's
        argmax in its input plane (PyTorch's convention; the first element in row-major
        window order on ties, the first NaN if any), for ``max_pool2d_backward(...,
        indices=indices)``.
    """
    where = "max_pool2d"
    x, _, args, o = _pool_inputs(where, x, kernel_size, stride, padding)
    y = np.empty((*x.shape[:2], *o), dtype=x.dtype)
    if not return_indices:
        if y.size:
            _pool.max_pool2d_forward(_planes(x), _planes(y), *args,
                                     _pool_threads(n_threads, where, x, y))
        return y
    if args[0] * x.shape[3] + args[1] >= 2 ** 31:  # the kernel keeps tap offsets in int32
        raise ValueError(f"{where}: return_indices=True needs kernel height * W + kernel width "
                         f"< 2**31, got kernel {args[:2]} and x of shape {x.shape}")
    indices = np.empty(y.shape, dtype=np.int64)
    if y.size:
        _pool.max_pool2d_forward_indices(_planes(x), _planes(y), _planes(indices), *args,
                                         _pool_threads(n_threads, where, x, y, indices))
    return y, indices


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, indices=None,
                        n_threads=None):
    """Gradient of :func:`max_pool2d`: each output gradient goes to its window's argmax
    (the first one on ties); overlapping windows add up.

    Parameters
    ----------
    indices : ndarray of integers, shape of ``grad_out``, optional
        The indices returned by ``max_pool2d(..., return_indices=True)``: the gradient is
        scattered there (fast) instead of finding each argmax again from ``x``; then only
        the shape and dtype of ``x`` are used. Indices outside ``[0, H*W)`` raise
        ValueError (nothing is written out of bounds); other indices are trusted.
        Both paths give the same bits.
    """
    where = "max_pool2d_backward"
    check_given(where, "grad_out", grad_out)
    if indices is None:
        x, grad_out, args, _ = _pool_inputs(where, x, kernel_size, stride, padding, grad_out)
        grad_x = np.empty_like(x)
        if x.size:
            _pool.max_pool2d_backward(_planes(grad_out), _planes(x), _planes(grad_x), *args,
                                      _pool_threads(n_threads, where, x, grad_out, grad_x))
        return grad_x
    x, grad_out, _, _ = _pool_inputs(where, x, kernel_size, stride, padding, grad_out,
                                     copy_x=False)
    indices = index_array(where, "indices", indices, grad_out.shape)
    grad_x = np.empty(x.shape, dtype=grad_out.dtype)
    if grad_x.size:
        planes = x.shape[0] * x.shape[1]
        bad = _pool.max_pool2d_backward_indices(
            grad_out.reshape(planes, -1), indices.reshape(planes, -1),
            grad_x.reshape(planes, -1),
            _pool_threads(n_threads, where, grad_x, grad_out, indices))
        if bad:
            size = x.shape[2] * x.shape[3]
            raise ValueError(f"{where}: indices must be in [0, H*W) = [0, {size}), got {bad} "
                             f"outside (values from {indices.min()} to {indices.max()})")
    return grad_x


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True, n_threads=None):
    """Average pooling; with ``count_include_pad=False`` padded zeros are left out of the
    divisor. Returns (N, C, Ho, Wo)."""
    where = "avg_pool2d"
    x, _, args, o = _pool_inputs(where, x, kernel_size, stride, padding)
    y = np.empty((*x.shape[:2], *o), dtype=x.dtype)
    if y.size:
        _pool.avg_pool2d_forward(_planes(x), _planes(y), *args, bool(count_include_pad),
                                 _pool_threads(n_threads, where, x, y))
    return y


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0,
                        count_include_pad=True, n_threads=None):
    """Gradient of :func:`avg_pool2d`: each output gradient is spread evenly over its
    window; overlapping windows add up."""
    where = "avg_pool2d_backward"
    check_given(where, "grad_out", grad_out)
    x, grad_out, args, _ = _pool_inputs(where, x, kernel_size, stride, padding, grad_out)
    grad_x = np.empty_like(x)
    if x.size:
        _pool.avg_pool2d_backward(_planes(grad_out), _planes(grad_x), *args,
                                  bool(count_include_pad),
                                  _pool_threads(n_threads, where, grad_x, grad_out))
    return grad_x


def global_avg_pool2d(x, n_threads=None):
    """Mean over the spatial dimensions: (N, C, H, W) -> (N, C)."""
    where = "global_avg_pool2d"
    x = float_arrays(where, x=x)
    check_ndim(where, "x", x, 4, "(N, C, H, W)")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"{where}: x must have H, W >= 1, got {x.shape}")
    y = np.empty(x.shape[:2], dtype=x.dtype)
    if y.size:
        _pool.global_avg_pool2d_forward(x.reshape(y.size, -1), y.reshape(-1),
                                        _threads(n_threads, where, y.size, nbytes=x.nbytes))
    return y


def global_avg_pool2d_backward(grad_out, x, n_threads=None):
    """Gradient of :func:`global_avg_pool2d`: every pixel gets ``grad_out[n, c] / (H*W)``."""
    where = "global_avg_pool2d_backward"
    check_given(where, "grad_out", grad_out)
    grad_out, x = float_arrays(where, grad_out=grad_out, x=x)
    check_ndim(where, "x", x, 4, "(N, C, H, W)")
    check_shape(where, "grad_out", grad_out, x.shape[:2])
    grad_x = np.empty_like(x)
    if x.size:
        _pool.global_avg_pool2d_backward(grad_out.reshape(-1), grad_x.reshape(grad_out.size, -1),
                                         _threads(n_threads, where, grad_out.size,
                                                  nbytes=x.nbytes))
    return grad_x



"""The public kernel API, in the manner of ``torch.nn.functional``: NumPy arrays in and out.

Every function validates its arguments here, at the Python boundary, and then runs a
compiled Cython/OpenMP kernel with bounds checks off. :mod:`cnncore.reference` holds a
NumPy twin of each function with the same name and signature.

Conventions
-----------
- Activations are NCHW (``(N, C, L)`` for 1-D), weights ``(C_out, C_in // groups, kH, kW)``;
  convolution is cross-correlation (the kernel is not flipped), as in PyTorch.
- ``padding`` is an int, a pair, or ``'valid'`` (0), ``'same'`` (``d*(k-1)//2``, odd kernels
  only) or ``'full'`` (``d*(k-1)``); ``stride`` and ``dilation`` are an int or a pair. The
  output size is ``floor((H + 2p - d(k-1) - 1) / s) + 1``.
- float32 and float64 are supported; the output dtype follows the input. Integer and bool
  inputs are cast to the float dtype of the other array arguments (float32 if none);
  float32 mixed with float64 raises TypeError. Non-contiguous inputs are copied.
- ``n_threads=None`` uses :func:`cnncore.get_num_threads`. Results are bit-identical for
  every thread count: reductions over the batch run in a fixed order.
- Bad shapes raise ValueError, bad dtypes or argument types TypeError, naming the function
  and the expected and received shapes.
"""

import math
import os
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from ._api import KERNELS, NORM_KERNELS
from ._args import conv1d_as_2d, conv_padding, out_size, pair, pool_geometry
from ._checks import (check_blas_size, check_given, check_int, check_ndim, check_shape,
                      float_arrays, index_array)
from ._config import resolve_threads
from ._kernels import activations as _act
from ._kernels import conv as _conv
from ._kernels import conv_direct as _conv_direct
from ._kernels import dense as _dense
from ._kernels import pool as _pool
from ._kernels import winograd as _winograd
from ._norm_kernels import (  # noqa: F401  (re-exported)
    batch_norm, batch_norm_backward, dropout, dropout_backward, local_response_norm,
    local_response_norm_backward)

__all__ = list(KERNELS + NORM_KERNELS)

# A parallel region costs microseconds on an idle machine and far more when another process
# holds a core (the team waits for its slowest thread), so small calls run on fewer threads:
# each thread gets at least this much work. Results do not depend on the choice.
_MIN_FLOPS_PER_THREAD = 1 << 21   # compute-bound kernels (conv, linear)
_MIN_BYTES_PER_THREAD = 1 << 18   # memory-bound kernels (activations, losses, global pooling)
# Window pooling counts every byte it reads and writes against this: its compares and selects
# cost about twice a ReLU per byte (max pool 2x2/2 at batch 64: LeNet's second pool, 0.4 MB
# in, is 1.8-1.9x faster on 2 threads, with or without indices, and so is its backward).
_MIN_POOL_BYTES_PER_THREAD = 1 << 17
# Upper bound on the number of batch chunks of the conv weight gradient, and on the memory
# of their partial sums. Both depend on shapes only, never on the thread count.
_MAX_DW_CHUNKS = 16
_DW_CHUNK_BYTES = 64 << 20
# Winograd F(2x2, 3x3) pays off once both channel counts give its 16 GEMMs something to
# reduce over. Measured side by side with im2col + GEMM at 1 thread (batch 64, 3x3 pad 1):
# forward 16 -> 32 channels at 16x16 1.26x faster, 8 -> 8 at 28x28 1.05x slower; backward
# 32 -> 64 at 32x32 1.25x faster, 16 -> 32 1.2x slower (its transforms dominate).
# Each GEMM covers at least _WINOGRAD_MIN_TILES 2x2 tiles (several samples if small).
_WINOGRAD_MIN_CHANNELS = 16
_WINOGRAD_MIN_CHANNELS_BACKWARD = 32
_WINOGRAD_MIN_TILES = 64
_WINOGRAD_MIN_TILES_DW = 256  # the weight gradient's GEMMs reduce over the tiles


def _transposed_dw_cols(k_g, p, pointwise):
    """Whether the im2col weight gradient ``dw (C_out/g x k_g) = dy (C_out/g x p) @ col^T``
    reads ``col`` built as (p x k_g) rather than (k_g x p). From a (k_g x p) matrix BLAS packs
    its operand transposed, which OpenBLAS does slowly for small products: LeNet's conv2
    (16 x 150 x 100) was 2x slower. Measured at 1 thread over 13 shapes (C_out/g 6-128,
    k_g 9-800, p 16-4096), the (p x k_g) layout was never slower where k_g >= p and up to
    2.8x faster; below that it lost up to 1.8x (long p). A 1x1 convolution keeps x as its
    column matrix."""
    return not pointwise and k_g >= p


def _threads(n_threads, where, tasks, flops=0, nbytes=0,
             bytes_per_thread=_MIN_BYTES_PER_THREAD):
    """Threads for one call: the requested count, capped by the number of independent
    tasks and by the amount of work (see _MIN_FLOPS_PER_THREAD)."""
    # a plain positive int (the common case) skips resolve_threads' numbers.Integral check
    n = n_threads if type(n_threads) is int and n_threads > 0 else resolve_threads(n_threads,
                                                                                   where)
    by_work = max(flops // _MIN_FLOPS_PER_THREAD, nbytes // bytes_per_thread, 1)
    return int(max(1, min(n, tasks, by_work)))


_blas_libs = None


class _one_blas_thread:
    """Hold SciPy's BLAS (the one our kernels call) to one thread while our OpenMP threads
    call it — no N*M oversubscription, as scikit-learn does around its prange + GEMM
    loops — and restore the previous count afterwards: ``with _one_blas_thread(): ...``.

    threadpoolctl finds the library once; each use then costs a few ctypes calls, where
    ``threadpool_limits`` would cost tens of microseconds per kernel call. A class rather
    than a @contextmanager generator: about 0.7 us less per call.
    """

    __slots__ = ("_saved",)

    def __enter__(self):
        global _blas_libs
        if _blas_libs is None:
            import scipy.linalg  # noqa: F401  (loads the BLAS behind scipy.linalg.cython_blas)
            libs = ThreadpoolController().select(user_api="blas").lib_controllers
            ours = [lib for lib in libs if "scipy" in os.path.dirname(lib.filepath or "")]
            _blas_libs = ours or libs  # e.g. conda: one BLAS shared with NumPy
        self._saved = saved = [(lib, lib.get_num_threads()) for lib in _blas_libs]
        for lib, n in saved:
            if n != 1:
                lib.set_num_threads(1)
        return self

    def __exit__(self, *exc_info):
        for lib, n in self._saved:
            if n != 1:
                lib.set_num_threads(n)
        return False


# ----------------------------------------------------------------------------- convolution

class _ConvGeometry:
    __slots__ = ("stride", "padding", "dilation", "groups", "out_hw")

    def __init__(self, where, x_shape, w_shape, stride, padding, dilation, groups, show=tuple):
        n, c, h, w = x_shape
        c_out, cg, kh, kw = w_shape
        x_shape, w_shape = show(x_shape), show(w_shape)  # as the caller sees them
        self.groups = groups = check_int(where, "groups", groups, 1)
        self.stride = pair(stride, "stride", minimum=1, where=where)
        self.dilation = pair(dilation, "dilation", minimum=1, where=where)
        self.padding = conv_padding(padding, (kh, kw), self.dilation, where=where)
        if min(c_out, cg, kh, kw) < 1:
            raise ValueError(f"{where}: weight must have no empty dimension, got {w_shape}")
        if min(c, h, w) < 1:
            raise ValueError(f"{where}: x must have no empty channel or spatial dimension, "
                             f"got {x_shape}")
        if c_out % groups:
            raise ValueError(f"{where}: out channels {c_out} (weight shape {w_shape}) are not "
                             f"divisible by groups={groups}")
        if cg * groups != c:
            raise ValueError(f"{where}: x has {c} channels (shape {x_shape}) but weight "
                             f"{w_shape} with groups={groups} expects {cg * groups}")
        self.out_hw = (
            out_size(h, kh, self.stride[0], self.padding[0], self.dilation[0], where=where,
                     axis="H"),
            out_size(w, kw, self.stride[1], self.padding[1], self.dilation[1], where=where,
                     axis="W"),
        )
        check_blas_size(where, cg * kh * kw * self.out_hw[0] * self.out_hw[1],
                        c_out * self.out_hw[0] * self.out_hw[1], c_out * cg * kh * kw)

    def kernel_args(self):
        return (*self.stride, *self.padding, *self.dilation, self.groups)


_GEOMETRY_CACHE = {}


def _typed(value):
    """Cache key part that tells 1 from 1.0 and True (equal as dict keys, not as arguments)."""
    if type(value) in (tuple, list):
        return (type(value),) + tuple(_typed(v) for v in value)
    return (type(value), value)


def _conv_geometry(*args):
    """A layer calls with the same shapes and hyper-parameters every step: parse them once."""
    key = _typed(args)
    geo = _GEOMETRY_CACHE.get(key)
    if geo is None:
        geo = _ConvGeometry(*args)  # raises on bad arguments: nothing is cached then
        if len(_GEOMETRY_CACHE) > 1024:
            _GEOMETRY_CACHE.clear()
        _GEOMETRY_CACHE[key] = geo
    return geo


def _drop_height(shape):
    """How a conv1d caller sees the (N, C, 1, L) arrays the 2-D kernels work on."""
    return tuple(shape[:2]) + tuple(shape[3:])


def _conv_inputs(where, x, weight, stride, padding, dilation, groups, bias=None,
                 grad_out=None, one_d=False):
    x, weight, bias, grad_out = float_arrays(where, x=x, weight=weight, bias=bias,
                                             grad_out=grad_out)
    show = tuple
    if one_d:  # conv1d: (N, C, L) runs as (N, C, 1, L) with a (C_out, C_in/g, 1, k) kernel
        check_ndim(where, "x", x, 3, "(N, C, L)")
        check_ndim(where, "weight", weight, 3, "(C_out, C_in/groups, k)")
        x, weight, show = x[:, :, None, :], weight[:, :, None, :], _drop_height
        if grad_out is not None:
            check_ndim(where, "grad_out", grad_out, 3, "(N, C_out, L_out)")
            grad_out = grad_out[:, :, None, :]
    check_ndim(where, "x", x, 4, "(N, C, H, W)")
    check_ndim(where, "weight", weight, 4, "(C_out, C_in/groups, kH, kW)")
    geo = _conv_geometry(where, x.shape, weight.shape, stride, padding, dilation, groups, show)
    if bias is not None:
        check_shape(where, "bias", bias, (weight.shape[0],))
    if grad_out is not None:
        expected = (x.shape[0], weight.shape[0], *geo.out_hw)
        if grad_out.shape != expected:
            raise ValueError(f"{where}: grad_out must have shape {show(expected)}, got "
                             f"{show(grad_out.shape)}")
    return x, weight, bias, grad_out, geo


# Scratch buffers (im2col columns, per-chunk weight gradients) are kept between calls, one
# set per Python thread: a training step would otherwise map and fault in fresh pages for
# them on every call. Buffers larger than this are allocated per call and not kept.
_MAX_CACHED_SCRATCH_BYTES = 64 << 20
_scratch = threading.local()


def _scratch_array(name, shape, dtype):
    """A C-contiguous scratch array of ``shape``; its contents are undefined."""
    need = max(1, math.prod(shape))  # at least one element, so a pointer to it exists
    dtype = np.dtype(dtype)
    if need * dtype.itemsize > _MAX_CACHED_SCRATCH_BYTES:
        return np.empty(need, dtype=dtype)[:math.prod(shape)].reshape(shape)
    cache = _scratch.__dict__.setdefault("buffers", {})
    buf = cache.get((name, dtype))
    if buf is None or buf.size < need:
        buf = cache[(name, dtype)] = np.empty(need, dtype=dtype)
    return buf[:math.prod(shape)].reshape(shape)


def _work(n_threads, size, dtype):
    """One im2col buffer per thread (at least one element, so a pointer to it exists)."""
    return _scratch_array("im2col", (n_threads, max(size, 1)), dtype)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, n_threads=None):
    """2-D convolution (cross-correlation) of a batch of images.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    weight : ndarray, shape (C_out, C_in // groups, kH, kW)
    bias : ndarray, shape (C_out,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int), or 'valid' / 'same' / 'full'
    groups : int
        Input and output channels are split into ``groups`` independent convolutions
        (``groups == C_in`` is a depthwise convolution).
    n_threads : int, optional

    Returns
    -------
    y : ndarray, shape (N, C_out, Ho, Wo), with ``Ho = floor((H + 2p - d(kH-1) - 1)/s) + 1``.
    """
    return _conv_forward("conv2d", x, weight, bias, stride, padding, dilation, groups,
                         n_threads)


def _use_winograd(geo, c_in, c_out, kh, kw, min_channels):
    """Winograd F(2x2, 3x3) for 3x3, stride-1, undilated, ungrouped convolutions with
    padding <= 2 (the input gradient is then a 3x3 convolution with padding 2 - p)."""
    return (kh == kw == 3 and geo.stride == (1, 1) and geo.dilation == (1, 1)
            and geo.groups == 1 and max(geo.padding) <= 2
            and min(c_in, c_out) >= min_channels)


def _winograd_block(n, out_hw, min_tiles):
    """Samples per Winograd GEMM: enough for ``min_tiles`` tiles. It depends on shapes
    only, so results do not depend on the thread count."""
    tiles = ((out_hw[0] + 1) // 2) * ((out_hw[1] + 1) // 2)
    return min(n, -(-min_tiles // tiles))


def _winograd_conv(x, weight, bias, out_hw, padding, n_threads):
    """3x3 stride-1 convolution by Winograd F(2x2, 3x3) (see _kernels/winograd.pyx)."""
    n, c = x.shape[:2]
    c_out = weight.shape[0]
    nb = _winograd_block(n, out_hw, _WINOGRAD_MIN_TILES)
    n_threads = min(n_threads, -(-n // nb))
    u = _scratch_array("winograd_u", (16, c_out, c), x.dtype)
    _winograd.transform_weights(weight, u, n_threads)
    y = np.empty((n, c_out, *out_hw), dtype=x.dtype)
    work = _scratch_array(
        "winograd", (n_threads, _winograd.work_size(c, c_out, *out_hw, nb)), x.dtype)
    b = bias if bias is not None else np.empty(0, dtype=x.dtype)
    with _one_blas_thread():
        _winograd.forward(x, u, b, y, work, *padding, nb, n_threads)
    return y


def _winograd_backward(grad_out, x, weight, padding, n_threads, need_grad_x):
    """Input (None unless ``need_grad_x``) and weight gradients of a convolution that
    :func:`_use_winograd` accepts."""
    n, c = x.shape[:2]
    c_out = weight.shape[0]
    out_hw = grad_out.shape[2:]
    nb = _winograd_block(n, out_hw, _WINOGRAD_MIN_TILES_DW)
    # Fixed batch chunks of the transformed weight gradient, as in _conv_backward.
    n_chunks = max(1, min(-(-n // nb), _MAX_DW_CHUNKS,
                          _DW_CHUNK_BYTES // (16 * c_out * c * x.itemsize)))
    threads = min(n_threads, n_chunks)
    du_part = _scratch_array("winograd_du", (n_chunks, 16, c_out, c), x.dtype)
    work = _scratch_array(
        "winograd", (threads, _winograd.backward_work_size(c, c_out, *out_hw, nb)), x.dtype)
    with _one_blas_thread():
        _winograd.weight_grad(x, grad_out, du_part, work, *padding, nb, threads)
    du = du_part[0]
    if n_chunks > 1:
        du = np.empty((16, c_out, c), dtype=x.dtype)
        _conv.sum_chunks(du_part.reshape(n_chunks, -1), du.reshape(-1), n_threads)
    grad_weight = np.empty_like(weight)
    _winograd.untransform_weight_grad(du, grad_weight, n_threads)
    if not need_grad_x:
        return None, grad_weight
    # dx = full correlation of dy with the flipped kernel, channels swapped: a 3x3
    # stride-1 convolution with padding 2 - p, whose output has the size of x.
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    grad_x = _winograd_conv(grad_out, flipped, None, x.shape[2:],
                            (2 - padding[0], 2 - padding[1]), n_threads)
    return grad_x, grad_weight


def _conv_forward(where, x, weight, bias, stride, padding, dilation, groups, n_threads,
                  one_d=False):
    x, weight, bias, _, geo = _conv_inputs(where, x, weight, stride, padding, dilation,
                                           groups, bias=bias, one_d=one_d)
    n, c = x.shape[:2]
    c_out, cg, kh, kw = weight.shape
    direct = cg == 1 and groups > 1  # depthwise-like: one input channel per group, no real GEMM
    flops = 2 * n * c_out * geo.out_hw[0] * geo.out_hw[1] * cg * kh * kw
    n_threads = _threads(n_threads, where, n * c_out if direct else n, flops)
    if n and _use_winograd(geo, c, c_out, kh, kw, _WINOGRAD_MIN_CHANNELS):
        return _winograd_conv(x, weight, bias, geo.out_hw, geo.padding, n_threads)
    y = np.empty((n, c_out, *geo.out_hw), dtype=x.dtype)
    if n == 0:
        return y
    b = bias if bias is not None else np.empty(0, dtype=x.dtype)
    if direct:
        _conv_direct.forward(x, weight, b, y, *geo.kernel_args()[:-1], n_threads)
        return y
    work = _work(n_threads, cg * kh * kw * geo.out_hw[0] * geo.out_hw[1], x.dtype)
    with _one_blas_thread():
        _conv.conv2d_forward(x, weight, b, y, work, *geo.kernel_args(), n_threads)
    return y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    n_threads=None, need_grad_x=True):
    """Gradients of :func:`conv2d` with respect to its input, weight and bias.

    ``need_grad_x=False`` skips the input gradient (a network's first layer has no use for
    it; PyTorch skips it too when the input does not require grad) and returns None in its
    place.

    Returns
    -------
    grad_x : ndarray, shape of ``x`` (None if ``need_grad_x`` is false)
    grad_weight : ndarray, shape of ``weight``
    grad_bias : ndarray, shape (C_out,)
    """
    check_given("conv2d_backward", "grad_out", grad_out)
    return _conv_backward("conv2d_backward", grad_out, x, weight, stride, padding, dilation,
                          groups, n_threads, need_grad_x=need_grad_x)


def _conv_backward(where, grad_out, x, weight, stride, padding, dilation, groups, n_threads,
                   one_d=False, need_grad_x=True):
    x, weight, _, grad_out, geo = _conv_inputs(where, x, weight, stride, padding, dilation,
                                               groups, grad_out=grad_out, one_d=one_d)
    n, c = x.shape[:2]
    c_out, cg, kh, kw = weight.shape
    k_g = cg * kh * kw
    direct = cg == 1 and groups > 1  # depthwise-like: one input channel per group
    flops = 4 * n * c_out * geo.out_hw[0] * geo.out_hw[1] * k_g
    # Fixed batch chunks for the weight gradient: their number depends on shapes only.
    n_chunks = max(1, min(n, _MAX_DW_CHUNKS, _DW_CHUNK_BYTES // (c_out * k_g * x.itemsize)))
    n_threads = _threads(n_threads, where, n * c if direct else n_chunks, flops)
    need_grad_x = bool(need_grad_x)
    grad_bias = np.empty(c_out, dtype=x.dtype)
    if n == 0:
        return (np.empty_like(x) if need_grad_x else None, np.zeros_like(weight),
                np.zeros_like(grad_bias))
    _conv.bias_grad(grad_out.reshape(n, c_out, -1), grad_bias, n_threads)
    if _use_winograd(geo, c, c_out, kh, kw, _WINOGRAD_MIN_CHANNELS_BACKWARD):
        return (*_winograd_backward(grad_out, x, weight, geo.padding, n_threads, need_grad_x),
                grad_bias)
    grad_x = np.empty_like(x) if need_grad_x else None
    # Without grad_x the kernels get a 1-element stand-in they never write.
    dx = grad_x if need_grad_x else np.empty((1, 1, 1, 1), dtype=x.dtype)
    if direct:
        grad_weight = np.empty_like(weight)
        _conv_direct.backward(grad_out, x, weight, dx, grad_weight,
                              *geo.kernel_args()[:-1], need_grad_x, n_threads)
        return grad_x, grad_weight, grad_bias
    # With one chunk, dw_part[0] is the result handed to the caller: not a scratch buffer.
    dw_part = (np.empty((1, c_out, k_g), dtype=x.dtype) if n_chunks == 1 else
               _scratch_array("dw_chunks", (n_chunks, c_out, k_g), x.dtype))
    work = _work(n_threads, k_g * geo.out_hw[0] * geo.out_hw[1], x.dtype)
    pointwise = (kh, kw, *geo.stride, *geo.padding) == (1, 1, 1, 1, 0, 0)
    dw_t = _transposed_dw_cols(k_g, geo.out_hw[0] * geo.out_hw[1], pointwise)
    with _one_blas_thread():
        _conv.conv2d_backward(grad_out, x, weight, dx, dw_part, work,
                              *geo.kernel_args(), need_grad_x, dw_t, n_threads)
    if n_chunks == 1:
        grad_weight = dw_part[0]
    else:
        grad_weight = np.empty(c_out * k_g, dtype=x.dtype)
        _conv.sum_chunks(dw_part.reshape(n_chunks, -1), grad_weight, n_threads)
    return grad_x, grad_weight.reshape(weight.shape), grad_bias


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, n_threads=None):
    """1-D convolution of sequences ``(N, C_in, L)`` with weights ``(C_out, C_in // groups, k)``,
    computed by the 2-D kernels on a height-1 image. Returns ``(N, C_out, L_out)``."""
    where = "conv1d"
    s, p, d = conv1d_as_2d(stride, padding, dilation, where=where)
    y = _conv_forward(where, x, weight, bias, s, p, d, groups, n_threads, one_d=True)
    return y[:, :, 0, :]


def conv1d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    n_threads=None, need_grad_x=True):
    """Gradients of :func:`conv1d`: ``(grad_x, grad_weight, grad_bias)``; ``grad_x`` is None
    with ``need_grad_x=False``, as in :func:`conv2d_backward`."""
    where = "conv1d_backward"
    check_given(where, "grad_out", grad_out)
    s, p, d = conv1d_as_2d(stride, padding, dilation, where=where)
    gx, gw, gb = _conv_backward(where, grad_out, x, weight, s, p, d, groups, n_threads,
                                one_d=True, need_grad_x=need_grad_x)
    return (None if gx is None else gx[:, :, 0, :]), gw[:, :, 0, :], gb


# ----------------------------------------------------------------------------- pooling

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
    try:
        key = ("pool", where, h, w) + _typed((kernel_size, stride, padding))
        geo = _GEOMETRY_CACHE.get(key)
    except TypeError:  # unhashable arguments: parsed (and rejected) below, not cached
        key = geo = None
    if geo is None:
        k, s, p, o = pool_geometry(h, w, kernel_size, stride, padding, where=where)
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:
            raise ValueError(f"{where}: padding {p} must be at most half the kernel size {k}")
        geo = ((*k, *s, *p), o)
        if key is not None:
            if len(_GEOMETRY_CACHE) > 1024:
                _GEOMETRY_CACHE.clear()
            _GEOMETRY_CACHE[key] = geo
    return geo


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


# ----------------------------------------------------------------------------- activations

def _elementwise(where, kernel, x, *extra, grad_out=None, n_threads=None):
    if grad_out is None:
        x = float_arrays(where, x=x)
        inputs = (x.reshape(-1),)
    else:
        grad_out, x = float_arrays(where, grad_out=grad_out, x=x)
        check_shape(where, "grad_out", grad_out, x.shape)
        inputs = (grad_out.reshape(-1), x.reshape(-1))
    out = np.empty_like(x)
    threads = _threads(n_threads, where, x.size, nbytes=x.nbytes)
    kernel(*inputs, out.reshape(-1), *extra, threads)
    return out


def relu(x, n_threads=None):
    """``max(x, 0)``, element-wise, any shape."""
    return _elementwise("relu", _act.leaky_relu_forward, x, 0.0, n_threads=n_threads)


def relu_backward(grad_out, x, n_threads=None):
    """``grad_out`` where ``x > 0``, else 0."""
    check_given("relu_backward", "grad_out", grad_out)
    return _elementwise("relu_backward", _act.leaky_relu_backward, x, 0.0, grad_out=grad_out,
                        n_threads=n_threads)


def _slope(where, negative_slope):
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float, np.number)):
        raise TypeError(f"{where}: negative_slope must be a number, got {negative_slope!r}")
    return float(negative_slope)


def leaky_relu(x, negative_slope=0.01, n_threads=None):
    """``x`` where ``x > 0``, else ``negative_slope * x``."""
    where = "leaky_relu"
    return _elementwise(where, _act.leaky_relu_forward, x, _slope(where, negative_slope),
                        n_threads=n_threads)


def leaky_relu_backward(grad_out, x, negative_slope=0.01, n_threads=None):
    """``grad_out`` where ``x > 0``, else ``negative_slope * grad_out``."""
    where = "leaky_relu_backward"
    check_given(where, "grad_out", grad_out)
    return _elementwise(where, _act.leaky_relu_backward, x, _slope(where, negative_slope),
                        grad_out=grad_out, n_threads=n_threads)


def sigmoid(x, n_threads=None):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    return _elementwise("sigmoid", _act.sigmoid_forward, x, n_threads=n_threads)


def sigmoid_backward(grad_out, x, n_threads=None):
    """``grad_out * s * (1 - s)`` with ``s = sigmoid(x)``."""
    check_given("sigmoid_backward", "grad_out", grad_out)
    return _elementwise("sigmoid_backward", _act.sigmoid_backward, x, grad_out=grad_out,
                        n_threads=n_threads)


def tanh(x, n_threads=None):
    """Hyperbolic tangent, element-wise."""
    return _elementwise("tanh", _act.tanh_forward, x, n_threads=n_threads)


def tanh_backward(grad_out, x, n_threads=None):
    """``grad_out * (1 - tanh(x)^2)``."""
    check_given("tanh_backward", "grad_out", grad_out)
    return _elementwise("tanh_backward", _act.tanh_backward, x, grad_out=grad_out,
                        n_threads=n_threads)


# ----------------------------------------------------------------------------- dense & losses

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
    grad_weight = np.zeros_like(weight)
    grad_bias = np.zeros(weight.shape[0], dtype=x.dtype)
    if x.shape[0]:
        with _one_blas_thread():
            _dense.linear_backward(grad_out, x, weight, grad_x, grad_weight, grad_bias,
                                   _linear_threads(n_threads, where, x, weight))
    return grad_x, grad_weight, grad_bias


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

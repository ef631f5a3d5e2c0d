"""Convolution: :func:`conv2d`, :func:`conv1d` and their gradients.

Validation and geometry live here; which algorithm runs (Winograd, direct, 1x1 GEMM or
im2col + GEMM) is decided by :mod:`cnncore.functional.planner`.
"""

import numpy as np

from .._args import conv1d_as_2d, conv_padding, out_size, pair
from .._config import get_workspace_limit
from .._checks import check_blas_size, check_given, check_int, check_ndim, check_shape, float_arrays
from .._kernels import _blas
from .._kernels import conv as _conv
from .._kernels import conv_dense as _conv_dense
from .._kernels import conv_direct as _conv_direct
from .._kernels import conv_rows as _conv_rows
from .._kernels import reduce as _reduce
from .._kernels import dense as _dense
from .._kernels import winograd as _winograd
from . import planner
from ._common import _one_blas_thread, _scratch_array, _threads, _typed, _work, cached_geometry

__all__ = ["conv2d", "conv2d_backward", "conv1d", "conv1d_backward"]


class _ConvGeometry:
    __slots__ = ("stride", "padding", "dilation", "groups", "in_hw", "out_hw",
                 "whole_blas_sizes")

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
        self.in_hw = (h, w)
        self.out_hw = (
            out_size(h, kh, self.stride[0], self.padding[0], self.dilation[0], where=where,
                     axis="H"),
            out_size(w, kw, self.stride[1], self.padding[1], self.dilation[1], where=where,
                     axis="W"),
        )
        # Winograd's whole-sample matrices; im2col checks its tiles (_tile_plan), the direct
        # kernels use no BLAS.
        self.whole_blas_sizes = (cg * kh * kw * self.out_hw[0] * self.out_hw[1],
                                 c_out * self.out_hw[0] * self.out_hw[1], c_out * cg * kh * kw)

    def kernel_args(self):
        return (*self.stride, *self.padding, *self.dilation, self.groups)


def _tile_plan(where, n, c_out, cg, kh, kw, out_hw, itemsize):
    """``(rows, n_tiles, out_blocks, dx_blocks)``: the im2col / 1x1 tiles of output rows and
    channel blocks (planner.conv_tiles) under the workspace limit, after checking that
    BLAS' 32-bit ints hold one tile."""
    ho, wo = out_hw
    k_g = cg * kh * kw
    if k_g * wo > planner._BLAS_INT_MAX:
        raise ValueError(f"{where}: the smallest im2col tile, one output row, is a matrix of "
                         f"{k_g} x {wo} = {k_g * wo} elements (C_in/groups*kH*kW x W_out): "
                         f"too large for 32-bit BLAS; use fewer input channels per group, a "
                         f"smaller kernel or a narrower image")
    check_blas_size(where, ho * wo, c_out * k_g)  # a GEMM's leading dimension, the weights
    return planner.conv_tiles(n, c_out, cg, k_g, ho, wo, itemsize, get_workspace_limit())


def _conv_geometry(where, x_shape, w_shape, stride, padding, dilation, groups, show=tuple):
    """A layer calls with the same shapes and hyper-parameters every step: parse them once.
    Array shapes are tuples of ints and ``show`` a function, so only the hyper-parameters
    need their types in the key (1, 1.0 and True are equal as dict keys, not as arguments)."""
    key = (where, x_shape, w_shape, show, _typed((stride, padding, dilation, groups)))
    return cached_geometry(key, lambda: _ConvGeometry(where, x_shape, w_shape, stride,
                                                      padding, dilation, groups, show))


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


class WinogradWeights:
    """Winograd transforms of one weight array, kept between calls (see Conv2d, which keeps
    one per layer in eval mode): valid while ``token`` is the value given when they were
    made. The owner passes a token that changes whenever the weights may have changed
    (Conv2d: the weight Parameter's ``version``); a different token, shape or dtype drops
    every kept transform."""

    __slots__ = ("token", "_kept")

    def __init__(self):
        self.token = None
        self._kept = {}

    def get(self, name, token, weight, make):
        """The transform ``name`` of ``weight`` kept under ``token``, or ``make()`` kept."""
        key = (name, weight.shape, weight.dtype)
        if token is None or token != self.token:
            self._kept.clear()
            self.token = token
        u = self._kept.get(key)
        if u is None:
            u = make()
            if token is not None:
                self._kept[key] = u
        return u

    def clear(self):
        self.token = None
        self._kept.clear()


def _winograd_u(weight, n_threads, cache, token):
    """U (16, C_out, C_in) of ``weight``: kept by ``cache`` if given, else in scratch."""
    def make(new=np.empty if cache is not None else None):
        shape = (16, *weight.shape[:2])
        u = new(shape, weight.dtype) if new else _scratch_array("winograd_u", shape,
                                                                 weight.dtype)
        _winograd.transform_weights(weight, u, n_threads)
        return u
    return make() if cache is None else cache.get("u", token, weight, make)


def _winograd_u_dx(weight, n_threads, cache, token):
    """U of the input gradient's convolution (flipped kernel, channels swapped), from U."""
    def make(new=np.empty if cache is not None else None):
        u = _winograd_u(weight, n_threads, cache, token)
        shape = (16, weight.shape[1], weight.shape[0])
        u_dx = new(shape, weight.dtype) if new else _scratch_array("winograd_u_dx", shape,
                                                                    weight.dtype)
        _winograd.transform_for_input_grad(u, u_dx, n_threads)
        return u_dx
    return make() if cache is None else cache.get("u_dx", token, weight, make)


def _pack_threads(packed, n_threads):
    """Threads for packing weights into ``packed``: one below _PACK_ONE_THREAD_BYTES (a
    parallel region cost more than LeNet's 16 x 150 weights: its conv2 forward at batch 8
    took 1.46x the time of BLAS's, 1.0x packed on one thread)."""
    return 1 if packed.nbytes < _PACK_ONE_THREAD_BYTES else n_threads


_PACK_ONE_THREAD_BYTES = 1 << 18


def _winograd_up(weight, u, n_threads, cache, token):
    """The packed copy of ``u`` (_winograd.pack_weights) for the packed-weight GEMM: kept
    by ``cache`` if given, else in scratch."""
    def make(new=np.empty if cache is not None else None):
        shape = (16, _blas.packed_rows(u.shape[1]) * u.shape[2])
        up = new(shape, u.dtype) if new else _scratch_array("winograd_up", shape, u.dtype)
        _winograd.pack_weights(u, up, _pack_threads(up, n_threads))
        return up
    return make() if cache is None else cache.get("up", token, weight, make)


def _winograd_scratch(tasks, c, c_out, out_hw, nb, n_threads, dtype):
    """Per-thread scratch and the shared block buffers: empty unless there are fewer
    ``tasks`` (blocks or chunks) than threads; then the work of each is split over the
    threads (same results, see _kernels/winograd.pyx)."""
    split = tasks < n_threads
    work = _scratch_array(
        "winograd", (n_threads, _winograd.work_size(c, c_out, *out_hw, nb, split)), dtype)
    shared = _scratch_array(
        "winograd_shared", (_winograd.block_size(c, c_out, *out_hw, nb) if split else 0,), dtype)
    return work, shared


def _winograd_conv(x, weight, bias, out_hw, padding, n_threads, cache=None, token=None,
                   u=None, up=None):
    """3x3 stride-1 convolution by Winograd F(2x2, 3x3) (see _kernels/winograd.pyx), with
    the transformed weights ``u`` if given (then only ``weight.shape`` is read), else those
    of ``weight`` (kept in ``cache`` under ``token`` if given, see WinogradWeights); or
    with their packed copy ``up`` alone (every block of the packed GEMM's width)."""
    n, c = x.shape[:2]
    c_out = weight.shape[0]
    nb = planner.winograd_block(n, out_hw, planner._WINOGRAD_MIN_TILES)
    if up is not None:
        u = np.empty((0, 0, 0), dtype=x.dtype)
    elif u is None:
        u = _winograd_u(weight, n_threads, cache, token)
    tiles = planner.winograd_tiles(out_hw)
    if up is None and planner.packed_gemm(n, nb * tiles, tiles, kept=cache is not None,
                                          macs=c_out * c * nb * tiles):
        up = _winograd_up(weight, u, n_threads, cache, token)
    y = np.empty((n, c_out, *out_hw), dtype=x.dtype)
    work, shared = _winograd_scratch(-(-n // nb), c, c_out, out_hw, nb, n_threads, x.dtype)
    b = bias if bias is not None else np.empty(0, dtype=x.dtype)
    with _one_blas_thread():
        _winograd.forward(x, u, b, y, work, shared, *padding, nb, n_threads, Up=up)
    return y


def _winograd_backward(grad_out, x, weight, padding, n_threads, need_grad_x, cache=None,
                       token=None):
    """Input (None unless ``need_grad_x``) and weight gradients of a convolution that
    :func:`planner.use_winograd` accepts."""
    n, c = x.shape[:2]
    c_out = weight.shape[0]
    out_hw = grad_out.shape[2:]
    nb = planner.winograd_block(n, out_hw, planner._WINOGRAD_MIN_TILES_DW)
    # Fixed batch chunks of the transformed weight gradient, as in _conv_backward.
    n_chunks = max(1, min(-(-n // nb), planner._MAX_DW_CHUNKS,
                          planner._DW_CHUNK_BYTES // (16 * c_out * c * x.itemsize)))
    du_part = _scratch_array("winograd_du", (n_chunks, 16, c_out, c), x.dtype)
    work, shared = _winograd_scratch(n_chunks, c, c_out, out_hw, nb, n_threads, x.dtype)
    threads = min(n_threads, n_chunks) if len(shared) == 0 else n_threads
    with _one_blas_thread():
        _winograd.weight_grad(x, grad_out, du_part, work[:threads], shared, *padding, nb,
                              threads)
    du = du_part[0]
    if n_chunks > 1:
        du = np.empty((16, c_out, c), dtype=x.dtype)
        _reduce.sum_chunks(du_part.reshape(n_chunks, -1), du.reshape(-1), n_threads)
    grad_weight = np.empty_like(weight)
    _winograd.untransform_weight_grad(du, grad_weight, n_threads)
    if not need_grad_x:
        return None, grad_weight
    # dx = full correlation of dy with the flipped kernel, channels swapped: a 3x3
    # stride-1 convolution with padding 2 - p, whose output has the size of x.
    # Its transformed weights come from U (_winograd_u_dx), or, when every block of the
    # per-call products is packed, their packed copy straight from U; positional
    # arguments only, as the tests' spies on _winograd_conv expect.
    pad_dx = (2 - padding[0], 2 - padding[1])
    w_dx = weight.transpose(1, 0, 2, 3)
    nb_dx = planner.winograd_block(n, x.shape[2:], planner._WINOGRAD_MIN_TILES)
    tiles = planner.winograd_tiles(x.shape[2:])
    last = n - (n - 1) // nb_dx * nb_dx
    if cache is None and planner.packed_gemm(n, min(nb_dx, last) * tiles, tiles, kept=False,
                                             macs=c * c_out * nb_dx * tiles):
        up_dx = _scratch_array("winograd_up", (16, _blas.packed_rows(c) * c_out), x.dtype)
        _winograd.pack_weights(_winograd_u(weight, n_threads, None, None), up_dx,
                               _pack_threads(up_dx, n_threads), True)
        grad_x = _winograd_conv(grad_out, w_dx, None, x.shape[2:], pad_dx, n_threads, None,
                                None, None, up_dx)
    else:
        grad_x = _winograd_conv(grad_out, w_dx, None, x.shape[2:], pad_dx, n_threads, None,
                                None, _winograd_u_dx(weight, n_threads, cache, token))
    return grad_x, grad_weight


def _dense_weight(weight, geo, out=None, n_threads=1):
    """The convolution as one matrix ``W' (C_out*Ho*Wo, C_in*H*W)``:
    ``W'[(o, a, b), (c, i, j)] = w[o, c, ki, kj]`` where input pixel ``(i, j) = (a*sh - ph +
    ki*dh, b*sw - pw + kj*dw)`` is tap ``(ki, kj)`` of output pixel ``(a, b)``. For the maps
    :func:`planner.use_dense` accepts, every output's taps cover the whole input, so no
    entry of ``W'`` is a structural zero (no ``0 * inf`` where a direct sum skips a pixel).
    Written into ``out`` if given, else a new array."""
    c_out, c_in, kh, kw = weight.shape
    (h, w), (ho, wo) = geo.in_hw, geo.out_hw
    if out is None:
        out = np.empty((c_out * ho * wo, c_in * h * w), dtype=weight.dtype)
    _conv_dense.conv_matrix(weight, out, *planner.dense_taps(geo, kh, kw), n_threads)
    return out


def _dense_conv(x, weight, bias, geo, n_threads, cache, token):
    """A convolution on a map so small that every output reads the whole input
    (:func:`planner.use_dense`, e.g. 3x3 padding 1 on 2x2): one GEMM ``y = x W'^T`` with
    the matrix of :func:`_dense_weight`, kept in ``cache`` under ``token`` (eval-mode
    Conv2d) as the Winograd transforms are, else built in scratch memory."""
    n = x.shape[0]
    c_out, (ho, wo) = weight.shape[0], geo.out_hw
    if cache is not None:
        key = ("dense", geo.in_hw, geo.kernel_args())
        w_dense = cache.get(key, token, weight,
                            lambda: _dense_weight(weight, geo, n_threads=n_threads))
    else:
        w_dense = _dense_weight(weight, geo, out=_scratch_array(
            "conv_dense_w", (c_out * ho * wo, x[0].size), x.dtype), n_threads=n_threads)
    y = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    y2 = y.reshape(n, -1)
    b = (np.repeat(bias, ho * wo) if bias is not None else np.empty(0, dtype=x.dtype))
    yt = _scratch_array("conv_dense_yt", (y2.shape[1], n), x.dtype)
    with _one_blas_thread():
        _dense.linear_forward_wide(x.reshape(n, -1), w_dense, b, y2, yt, n_threads,
                                   planner._DENSE_COL_BLOCK)
    return y


def _dense_backward(grad_out, x, weight, geo, n_threads, need_grad_x):
    """``(grad_x or None, grad_weight)`` of :func:`_dense_conv`: ``dx = dy @ W'`` (the
    matrix built again in scratch memory, the forward's GEMM kernel reading it as (in, out)) and
    ``dw`` folded from ``dW' = dy^T @ x`` (_kernels/conv_dense.pyx)."""
    n = x.shape[0]
    c_out, c_in, kh, kw = weight.shape
    m, k = grad_out[0].size, x[0].size
    dy2, x2 = grad_out.reshape(n, m), x.reshape(n, k)
    taps = planner.dense_taps(geo, kh, kw)
    grad_weight = np.empty_like(weight)
    work = _scratch_array("conv_dense_dw", (n_threads, _conv_dense.work_size(
        *geo.out_hw, k)), x.dtype)
    with _one_blas_thread():
        _conv_dense.weight_grad(dy2, x2, grad_weight, *taps, work, n_threads)
    if not need_grad_x:
        return None, grad_weight
    w_dense = _dense_weight(weight, geo, n_threads=n_threads,
                            out=_scratch_array("conv_dense_w", (m, k), x.dtype))
    grad_x = np.empty_like(x)
    xt = _scratch_array("conv_dense_yt", (k, n), x.dtype)
    with _one_blas_thread():
        _dense.linear_forward_wide(dy2, w_dense, np.empty(0, dtype=x.dtype),
                                   grad_x.reshape(n, k), xt, n_threads,
                                   planner._DENSE_COL_BLOCK, True)
    return grad_x, grad_weight


def _conv_forward(where, x, weight, bias, stride, padding, dilation, groups, n_threads,
                  one_d=False, cache=None, token=None):
    x, weight, bias, _, geo = _conv_inputs(where, x, weight, stride, padding, dilation,
                                           groups, bias=bias, one_d=one_d)
    n, c = x.shape[:2]
    c_out, cg, kh, kw = weight.shape
    algorithm = planner.conv_algorithm(geo, c, c_out, kh, kw, n=n, kept=cache is not None,
                                       itemsize=x.itemsize)
    flops = 2 * n * c_out * geo.out_hw[0] * geo.out_hw[1] * cg * kh * kw
    group = 0  # samples per task of the grouped im2col pass (planner.sample_group)
    if algorithm == "direct":
        tasks = n * c_out
    elif algorithm == "rows":
        tasks = n * geo.out_hw[0]  # one task per output row
    elif algorithm == "winograd":
        check_blas_size(where, *geo.whole_blas_sizes)
        tasks = 16 * n  # 16 GEMMs per block of samples to share out
    elif algorithm == "dense":
        tasks = -(-c_out * geo.out_hw[0] * geo.out_hw[1] // planner._DENSE_COL_BLOCK)
    else:
        rows, n_tiles, k_parts, _ = _tile_plan(where, n, c_out, cg, kh, kw, geo.out_hw,
                                               x.itemsize)
        tasks = n * n_tiles * k_parts
        group = planner.sample_group(n, geo, c_out, cg * kh * kw, x.itemsize,
                                     kept=cache is not None)
        if group:
            tasks = -(-n // group)
    n_threads = _threads(n_threads, where, tasks, flops)
    if n and algorithm == "winograd":
        return _winograd_conv(x, weight, bias, geo.out_hw, geo.padding, n_threads, cache, token)
    if n and algorithm == "dense":
        return _dense_conv(x, weight, bias, geo, n_threads, cache, token)
    y = np.empty((n, c_out, *geo.out_hw), dtype=x.dtype)
    if n == 0:
        return y
    b = bias if bias is not None else np.empty(0, dtype=x.dtype)
    if algorithm == "direct":
        _conv_direct.forward(x, weight, b, y, *geo.kernel_args()[:-1], n_threads)
        return y
    if algorithm == "rows":
        _conv_rows_forward(x, weight, b, y, geo, n_threads)
        return y
    if group:
        cols = group * geo.out_hw[0] * geo.out_hw[1]
        work = _work(n_threads, (cg * kh * kw + c_out) * cols, x.dtype)
        _conv.conv2d_forward_grouped(x, _packed_weights(weight, n_threads, cache, token), b, y,
                                     work, kh, kw, *geo.kernel_args()[:-1], group, n_threads)
        return y
    work = _work(n_threads, 0 if algorithm == "pointwise" else cg * kh * kw * rows * geo.out_hw[1],
                 x.dtype)
    wp = None
    m_blocks = 1
    if geo.groups == 1 and planner.packed_gemm(n, rows * geo.out_hw[1],
                                               geo.out_hw[0] * geo.out_hw[1],
                                               kept=cache is not None,
                                               macs=c_out * cg * kh * kw * rows * geo.out_hw[1]):
        wp = _packed_weights(weight, n_threads, cache, token)
        if algorithm == "pointwise":  # blocks of output channels, not of input channels
            m_blocks, k_parts = planner.pointwise_out_blocks(k_parts, c_out), 1
    # blocks of input channels 1, 2, ... write partial outputs, added to y in order
    parts = _scratch_array("conv_parts", (k_parts - 1, n, c_out, geo.out_hw[0] * geo.out_hw[1]),
                           x.dtype)
    with _one_blas_thread():
        _conv.conv2d_forward(x, weight, b, y, work, parts, *geo.kernel_args(), rows,
                             n_threads, wp, m_blocks)
    return y


def _packed_weights(weight, n_threads, cache, token):
    """The packed copy of ``weight`` as a (C_out, C_in*kh*kw) matrix (_blas.pack) for the
    packed-weight GEMM: kept by ``cache`` if given, else in scratch."""
    def make(new=np.empty if cache is not None else None):
        size = (_blas.packed_rows(weight.shape[0]) * weight[0].size,)
        wp = new(size, weight.dtype) if new else _scratch_array("conv_packed", size,
                                                                weight.dtype)
        _blas.pack(weight.reshape(weight.shape[0], -1), wp, _pack_threads(wp, n_threads))
        return wp
    return make() if cache is None else cache.get("packed", token, weight, make)


def _conv_rows_forward(x, weight, b, y, geo, n_threads):
    """The direct row kernels (_kernels/conv_rows.pyx): per thread, the padded input rows of
    one output row (``C_in * kh`` rows of ``sw`` phases)."""
    sw, dw = geo.stride[1], geo.dilation[1]
    wq = _conv_rows.row_width(geo.out_hw[1], weight.shape[3], sw, dw)
    work = _scratch_array("conv_rows", (n_threads, _conv_rows.work_size(
        x.shape[1], weight.shape[2], wq, sw)), x.dtype)
    _conv_rows.forward(x, weight, b, y, work, *geo.kernel_args()[:-1], n_threads)


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
                   one_d=False, need_grad_x=True, cache=None, token=None):
    x, weight, _, grad_out, geo = _conv_inputs(where, x, weight, stride, padding, dilation,
                                               groups, grad_out=grad_out, one_d=one_d)
    n, c = x.shape[:2]
    c_out, cg, kh, kw = weight.shape
    k_g = cg * kh * kw
    algorithm = planner.conv_algorithm(geo, c, c_out, kh, kw, backward=True, n=n,
                                       itemsize=x.itemsize)
    direct = algorithm == "direct"
    p = geo.out_hw[0] * geo.out_hw[1]
    flops = 4 * n * c_out * p * k_g
    if direct:
        tasks = n * c
    elif algorithm == "dense":
        tasks = -(-c_out // _conv_dense.OUT_BLOCK_SIZE)
    elif algorithm == "winograd":
        check_blas_size(where, *geo.whole_blas_sizes)
        tasks = 16 * n  # Winograd: 16 GEMMs a block of samples
    else:
        rows, n_tiles, _, dx_blocks = _tile_plan(where, n, c_out, cg, kh, kw, geo.out_hw,
                                                 x.itemsize)
        n_parts, n_kblocks = planner.dw_split(n, n_tiles, p, c_out, cg, k_g, x.itemsize,
                                              get_workspace_limit())
        tasks = max(n_parts * n_kblocks, n * n_tiles * dx_blocks)
    n_threads = _threads(n_threads, where, tasks, flops)
    need_grad_x = bool(need_grad_x)
    grad_bias = np.empty(c_out, dtype=x.dtype)
    if n == 0:
        return (np.empty_like(x) if need_grad_x else None, np.zeros_like(weight),
                np.zeros_like(grad_bias))
    _reduce.bias_grad(grad_out.reshape(n, c_out, -1), grad_bias, n_threads)
    if algorithm == "winograd":
        return (*_winograd_backward(grad_out, x, weight, geo.padding, n_threads, need_grad_x,
                                    cache, token), grad_bias)
    if algorithm == "dense":
        return (*_dense_backward(grad_out, x, weight, geo, n_threads, need_grad_x), grad_bias)
    grad_x = np.empty_like(x) if need_grad_x else None
    # Without grad_x the kernels get a 1-element stand-in they never write.
    dx = grad_x if need_grad_x else np.empty((1, 1, 1, 1), dtype=x.dtype)
    if direct:
        grad_weight = np.empty_like(weight)
        _conv_direct.backward(grad_out, x, weight, dx, grad_weight,
                              *geo.kernel_args()[:-1], need_grad_x, n_threads)
        return grad_x, grad_weight, grad_bias
    group = planner.sample_group(n, geo, c_out, k_g, x.itemsize, kept=False)
    wpt = None  # w^T packed for the input gradient's products
    if need_grad_x and geo.groups == 1 and (group or planner.packed_gemm(
            n, rows * geo.out_hw[1], p, kept=False, macs=k_g * c_out * rows * geo.out_hw[1])):
        wpt = _scratch_array("conv_packed_t", (_blas.packed_rows(k_g) * c_out,), x.dtype)
        _blas.pack(weight.reshape(c_out, k_g).T, wpt, _pack_threads(wpt, n_threads))
    if need_grad_x and group:  # small maps: dx over groups of samples on the packed GEMM
        work = _work(n_threads, (k_g + c_out) * group * p, x.dtype)
        _conv.conv2d_input_grad_grouped(grad_out, wpt, grad_x, work, kh, kw,
                                        *geo.kernel_args()[:-1], group,
                                        min(n_threads, -(-n // group)))
        need_grad_x, wpt = False, None
    # With one part, dw_part[0] is the result handed to the caller: not a scratch buffer.
    dw_part = (np.empty((1, c_out, k_g), dtype=x.dtype) if n_parts == 1 else
               _scratch_array("dw_chunks", (n_parts, c_out, k_g), x.dtype))
    pointwise = algorithm == "pointwise"
    dw_t = planner.transposed_dw_cols(k_g, rows * geo.out_hw[1], pointwise)
    work = _work(n_threads, 0 if pointwise else k_g * rows * geo.out_hw[1], x.dtype)
    with _one_blas_thread():
        _conv.conv2d_backward(grad_out, x, weight, dx, dw_part, work, *geo.kernel_args(),
                              rows, n_kblocks, dx_blocks, need_grad_x, dw_t, n_threads, wpt)
    if n_parts == 1:
        grad_weight = dw_part[0]
    else:
        grad_weight = np.empty(c_out * k_g, dtype=x.dtype)
        _reduce.sum_chunks(dw_part.reshape(n_parts, -1), grad_weight, n_threads)
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



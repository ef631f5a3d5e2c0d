"""The choice of convolution algorithm, in one place.

:func:`conv_algorithm` picks, from shapes and hyper-parameters only (never from the thread
count, so results do not depend on it), one of:

``'dense'``
    convolutions on maps so small that every output reads the whole input (3x3 padding 1
    on 2x2): one GEMM with the convolution's matrix (:func:`use_dense`), kept between calls
    in eval mode, else built per call from batch _DENSE_MIN_BATCH;
``'winograd'``
    Winograd F(2x2, 3x3) (``_kernels/winograd.pyx``) for 3x3 stride-1 undilated ungrouped
    convolutions with enough channels and enough 2x2 output tiles in the batch;
``'direct'``
    the direct kernels (``_kernels/conv_direct.pyx``) for depthwise-like convolutions (one
    input channel per group: there is no GEMM worth the name);
``'rows'``
    the direct row kernels (``_kernels/conv_rows.pyx``), forward only, for few taps per
    output (``C_in * kh * kw``), few output channels and wide output rows (large images);
``'pointwise'``
    1x1 stride-1 unpadded: the input already is the column matrix, one GEMM per sample;
``'im2col'``
    im2col + GEMM for everything else.

The last two work on tiles of output rows (:func:`conv_tile_rows`) and split the weight
gradient over fixed parts and channel blocks (:func:`dw_split`).
"""

import functools

import numpy as np

from .._kernels import _blas

# Upper bound on the number of batch chunks of the conv weight gradient, and on the memory
# of their partial sums. Both depend on shapes only, never on the thread count.
_MAX_DW_CHUNKS = 16
_DW_CHUNK_BYTES = 64 << 20
# im2col / 1x1 tiles of output rows (conv_tiles, dw_split). A tile's column matrix is at
# most _TILE_BYTES (it stays in the L2 cache between im2col and GEMM); a batch smaller than
# _TARGET_TASKS is cut into more tiles, down to _MIN_TILE_COLS columns each (narrower GEMMs
# lose speed), then into blocks of input channels (at least _MIN_KBLOCK_ROWS rows of the
# column matrix each; _MIN_KPART_ROWS in the forward pass, whose blocks each write a whole
# partial output), so that a single image keeps the threads busy. Each partial sum of the weight gradient reduces over at least _MIN_PART_COLS
# columns (adding the parts costs about 1/_MIN_PART_COLS of the GEMMs' memory traffic).
_TILE_BYTES = 1 << 20
_MIN_TILE_COLS = 128
_TARGET_TASKS = 8
_MIN_KBLOCK_ROWS = 32
_MIN_KPART_ROWS = 64
_MIN_PART_COLS = 256
_BLAS_INT_MAX = 2 ** 31 - 1
# Winograd F(2x2, 3x3) pays off once both channel counts give its 16 GEMMs something to
# reduce over. Measured side by side with im2col + GEMM at 1 thread (batch 64, 3x3 pad 1):
# forward 16 -> 32 channels at 16x16 1.26x faster, 8 -> 8 at 28x28 1.05x slower; backward
# 32 -> 64 at 32x32 1.25x faster, 16 -> 32 1.2x slower (its transforms dominate).
# Each GEMM covers at least _WINOGRAD_MIN_TILES 2x2 tiles (several samples if small).
_WINOGRAD_MIN_CHANNELS = 16
_WINOGRAD_MIN_CHANNELS_BACKWARD = 32
_WINOGRAD_MIN_TILES = 64
# Few output channels (DenseNet's 48 -> 12 bottleneck convolutions): Winograd still wins
# with enough input channels on a large enough map. Measured side by side (float32, 2
# threads, batch 64, pad 1, median; Winograd / im2col time, forward and backward; the
# weight transform included, as in training):
#   48 -> 12 at 32x32 0.68 / 0.65   at 16x16 0.80 / 0.68   at 8x8 1.60 / 1.67 (im2col)
#   32 -> 12 at 32x32 0.73 / 0.70   at 16x16 1.53 / 0.98 (im2col)
#   24 -> 12 at 32x32 0.79 / 0.52   64 -> 12 at 16x16 0.83 / 0.64   48 -> 24 at 16x16 0.75 / 0.68
#   16 -> 8 at 16x16 1.7 (forward; im2col)
# So C_out >= _WINOGRAD_FEW_OUT below the usual channel minimum takes Winograd with C_in >=
# 24 and >= 256 tiles per sample (32x32 outputs), or C_in >= 48 and >= 64 tiles (16x16):
# (C_in, tiles per sample) pairs in _WINOGRAD_FEW_OUT_RULES.
_WINOGRAD_FEW_OUT = 8
_WINOGRAD_FEW_OUT_RULES = ((24, 256), (48, 64))
# The forward pass where im2col runs on the packed GEMM (_blas.PACKED) keeps the 32x32 rule
# only: forward, 2 threads, Winograd / im2col time: 48 -> 12 at 16x16 1.04 (batch 64), 1.21
# (batch 16); 64 -> 12 at 16x16 1.32; 48 -> 12 at 32x32 0.93 (batch 64), 0.96 (batch 16);
# DenseNet-121 CIFAR inference at batch 16: 0.91-0.96x the time with this rule.
_WINOGRAD_FEW_OUT_RULES_PACKED = ((24, 256),)
_WINOGRAD_MIN_TILES_DW = 256  # the weight gradient's GEMMs reduce over the tiles
# ... and enough 2x2 output tiles in the whole batch (N * ceil(Ho/2) * ceil(Wo/2)): with
# few tiles its 16 GEMMs are matrix-vector products that read U (16 * C_out * C_in, 16/9
# of the weight) for little work, and the weight transform costs as much as they do, where
# im2col's single (C_out x 9 C_in) @ (9 C_in x Ho Wo) GEMM reads the weight once. Measured
# side by side (float32, 1 thread, CPU time, median; Winograd / im2col time; pad 1):
#   forward   tiles  4: 3.2 (512@4, N=1)       8: 2.0 (512@4, N=2)
#             tiles 16: 1.28 (256@8, N=1), 1.93 (512@7)
#             tiles 32: 0.97 (256@8, N=2), 1.23 (512@7, N=2), 0.87 (512@4, N=8)
#             tiles 49: 0.91 (256@14)      64: 0.79 (128@16)    >= 98: 0.48-0.78
#   backward  tiles 16: 1.75, 2.37   32: 1.07, 1.32, 0.60   49: 1.16 (256@14)
#             tiles 64: 0.88 (128@16)   >= 98: 0.60-0.82
#   forward with the transformed weights kept (eval-mode Conv2d, see conv.WinogradWeights):
#             tiles  4: 1.68   8: 1.07   16: 0.98 (256@8), 1.04 (512@7), 0.56 (128@8),
#             0.67 (64@8), 1.01 (64@4, N=4)   32: 0.53-0.82
# The rule depends on the shapes only, never on the thread count (the 2-thread runs, on a
# machine shared with other jobs, were too noisy to move the crossover either way).
_WINOGRAD_MIN_BATCH_TILES = 48
# The direct row kernels (_kernels/conv_rows.pyx) in the forward pass of ungrouped
# convolutions with up to _ROWS_MAX_TAPS taps per output (C_in * kh * kw), up to
# _ROWS_MAX_COUT output channels and output rows at least _ROWS_MIN_WIDTH wide: no column
# matrix, so they beat the skinny im2col GEMMs of few input channels, and Winograd while the
# channels are few. Measured side by side (float32, batch 1 unless given, 2 threads, median
# time, rows / im2col, rows / Winograd where it applies; AVX-512 machine):
#   8->16 5x5 2048^2 0.45 (issue 11; vs PyTorch 0.66)   3->16 5x5 256^2-2048^2 0.43-0.48
#   3->32 3x3 1024^2 0.2 / 0.08   3->32 7x7 s2 224^2 0.67, 1024^2 0.59   3->64 7x7 s2 448^2 0.63
#   16->16 3x3 1024^2 0.36 / 0.21, 128^2 0.53 / 0.49, 64^2 N=8 0.57 / 0.83
#   32->32 3x3 512^2 0.59 / 0.43   64->64 3x3 256^2 0.73 / 0.67   64->128 0.82 / 0.90
#   128->128 3x3 256^2 0.75 / 1.09 (more taps: Winograd)   32->64 5x5 256^2 0.68 (800 taps)
#   3->128 3x3 512^2 0.72   3->256 0.99 (more channels: no gain)   8->16 5x5 64^2 0.60
#   narrow rows lose: 3->32 3x3 32^2 N=32 1.01-1.24, 6->16 5x5 14^2 N=64 1.64.
# The same rule at 1 thread (ratios within 0.05 of these).
_ROWS_MAX_TAPS = 800
_ROWS_MAX_COUT = 128
_ROWS_MIN_WIDTH = 64
_WINOGRAD_MIN_BATCH_TILES_KEPT = 16
# The dense small-map path (use_dense): with kept weights, a convolution whose every output
# reads the whole input is one GEMM with W' (C_out*Ho*Wo x C_in*H*W; on a 2x2 map with a 3x3
# kernel, padding 1: 16/9 of the weight, 4/9 of im2col's multiply-adds, which include the
# padding), in blocks of _DENSE_COL_BLOCK outputs. Measured side by side (float32, 2 threads,
# median time of an eval-mode Conv2d, dense / the algorithm chosen without this path):
#   2 threads: 512 -> 512 on 2x2 N=1 0.65, N=4 0.61, N=16 0.28, N=64 0.46; 256 -> 256 N=16
#   0.15; 512 -> 512 on 1x1 N=16 0.02; 16 -> 16 on 2x2 N=1 1.06 (22 us: too small to matter)
#   1 thread: 0.62, 0.63, 0.67, 0.28; 0.55; 0.05; 1.10.
#   Against PyTorch 2.13 (same process, interleaved): 512 -> 512 on 2x2 N=16 0.73, N=1 0.44.
# The column block is 256 outputs: 16 x 2048 x 2048 at 2 threads took 2.54 ms in blocks of
# 64, 2.38-2.48 in blocks of 256-1024 (and N=1 jumped from 0.12 to 1.8 ms above 256).
_DENSE_MAX_BYTES = 32 << 20
# Without kept weights (training, the functional API) the matrix is built on every call
# (1.8 ms for 512 -> 512 on 2x2 at 2 threads), and the backward pass builds it again for
# dx = dy @ W' and folds dW' = dy^T x (a 2048 x 2048 GEMM reducing over the batch) onto the
# taps. Measured side by side (2 threads, median; dense / Winograd or im2col, forward and
# backward; against PyTorch, forward + backward):
#   512 -> 512 on 2x2: N=64 0.69 / 0.63 (0.97x torch), N=16 0.61 / 0.60, N=8 1.08 / 1.08
#   256 -> 256 on 2x2: N=16 0.52 / 0.61, N=8 0.94 / 0.93;  64 -> 64 N=64 0.39 / 0.50
_DENSE_MIN_BATCH = 16
_DENSE_COL_BLOCK = 256
_WINOGRAD_MIN_BATCH_TILES_BACKWARD = 64
# Weights are packed for the packed-weight GEMM when they are kept (eval mode), or per call
# (training, cnncore.functional) from this many GEMM columns in the batch (Winograd tiles,
# output pixels): the packing copies the weights once, the products use them once per
# column. Winograd forward, 2 threads, packed per call / BLAS: 512 -> 512 on 4x4 at batch
# 16 (64 tiles) 1.03; 256 -> 256 on 8x8 at batch 16 (256 tiles) 0.94; 64 -> 64 on 32x32
# at batch 1 (256 tiles) 0.85; kept: 0.77, 0.86, 0.87.
_PACK_MIN_COLS = 128
# ... and small products stay with BLAS, whose small-matrix kernels skip packing: LeNet-5's
# conv2 (16 x 150 weights, 100 columns: 240 000 multiply-adds) forward took 1.57x BLAS's time
# on the packed GEMM, a 32 x 144 x 72 grouped product 1.2x; 12 x 432 x 256 (1.3 million)
# took 0.5x.
_PACK_MIN_MACS = 1 << 19


def transposed_dw_cols(k_g, p, pointwise):
    """Whether the im2col weight gradient ``dw (C_out/g x k_g) = dy (C_out/g x p) @ col^T``
    reads ``col`` built as (p x k_g) rather than (k_g x p). From a (k_g x p) matrix BLAS packs
    its operand transposed, which OpenBLAS does slowly for small products: LeNet's conv2
    (16 x 150 x 100) was 2x slower. Measured at 1 thread over 13 shapes (C_out/g 6-128,
    k_g 9-800, p 16-4096), the (p x k_g) layout was never slower where k_g >= p and up to
    2.8x faster; below that it lost up to 1.8x (long p). A 1x1 convolution keeps x as its
    column matrix."""
    return not pointwise and k_g >= p



def _winograd_channels(c_in, c_out, min_channels, tiles, rules):
    """Enough channels for Winograd: ``min_channels`` in and out, or few outputs
    (_WINOGRAD_FEW_OUT <= C_out < min_channels) with enough inputs for the map's ``tiles``
    2x2 output tiles per sample (``rules``: see _WINOGRAD_FEW_OUT_RULES)."""
    if min(c_in, c_out) >= min_channels:
        return True
    return c_out >= _WINOGRAD_FEW_OUT and any(
        c_in >= need_in and tiles >= need_tiles for need_in, need_tiles in rules)


def winograd_tiles(out_hw):
    """2x2 output tiles of one sample's ``out_hw`` map (the last row and column of tiles
    may be partial)."""
    return ((out_hw[0] + 1) // 2) * ((out_hw[1] + 1) // 2)


def use_winograd(geo, c_in, c_out, kh, kw, min_channels, n=None, min_tiles=0,
                 rules=_WINOGRAD_FEW_OUT_RULES):
    """Winograd F(2x2, 3x3) for 3x3, stride-1, undilated, ungrouped convolutions with
    padding <= 2 (the input gradient is then a 3x3 convolution with padding 2 - p), at
    least ``min_channels`` in and out (or few outputs on a large map, _winograd_channels
    with ``rules``) and, unless ``n`` is None, ``min_tiles`` 2x2 output tiles in a batch of
    ``n``."""
    tiles = winograd_tiles(geo.out_hw)
    return (kh == kw == 3 and geo.stride == (1, 1) and geo.dilation == (1, 1)
            and geo.groups == 1 and max(geo.padding) <= 2
            and _winograd_channels(c_in, c_out, min_channels, tiles, rules)
            and (n is None or n * tiles >= min_tiles))


@functools.lru_cache(maxsize=256)
def _taps(in_hw, out_hw, kernel, stride, padding, dilation):
    """``(tap_h, tap_w)``: ``tap_h[a, i]`` is the kernel row ``ki`` with ``i = a*sh - ph +
    ki*dh`` for output row ``a`` and input row ``i`` (likewise along the width); None when
    some output row or column misses an input one (the dense path then does not apply)."""
    taps = []
    for n_in, n_out, k, s, p, d in zip(in_hw, out_hw, kernel, stride, padding, dilation):
        tap = np.full((n_out, n_in), -1, dtype=np.intc)
        for a in range(n_out):
            for ki in range(k):
                i = a * s - p + ki * d
                if 0 <= i < n_in:
                    tap[a, i] = ki
        if (tap < 0).any():
            return None
        tap.flags.writeable = False
        taps.append(tap)
    return tuple(taps)


def dense_taps(geo, kh, kw):
    """The tap tables of the convolution matrix (_kernels/conv_dense.pyx) for ``geo`` and
    a ``kh x kw`` kernel, or None when some output does not read the whole input."""
    return _taps(geo.in_hw, geo.out_hw, (kh, kw), geo.stride, geo.padding, geo.dilation)


def use_dense(geo, c_in, c_out, kh, kw, itemsize=4):
    """The dense small-map path: an ungrouped convolution whose every output reads the
    whole input (3x3 padding 1 on 2x2 or 1x1 maps, a kernel the size of the input, ...), so
    that it is one GEMM with the matrix ``W' (C_out*Ho*Wo, C_in*H*W)`` (no more
    multiply-adds than the direct sum), and ``W'`` takes at most _DENSE_MAX_BYTES (see the
    measurements there). :func:`conv_algorithm` takes it with kept weights, or from batch
    _DENSE_MIN_BATCH."""
    (h, w), (ho, wo) = geo.in_hw, geo.out_hw
    return (geo.groups == 1 and h * w <= kh * kw
            and c_out * ho * wo * c_in * h * w * itemsize <= _DENSE_MAX_BYTES
            and dense_taps(geo, kh, kw) is not None)


def winograd_block(n, out_hw, min_tiles):
    """Samples per Winograd GEMM: enough for ``min_tiles`` tiles. It depends on shapes
    only, so results do not depend on the thread count."""
    tiles = winograd_tiles(out_hw)
    return min(n, -(-min_tiles // tiles))


def packed_gemm(n, cols, per_sample, kept, macs=None):
    """Whether the products of a convolution (batch ``n``, ``per_sample`` GEMM columns a
    sample: Winograd tiles or output pixels) whose GEMMs have ``cols`` columns (a block of
    samples' tiles, a tile of output rows) run on the packed-weight GEMM (cnncore_gemm.h;
    see _blas.PACKED): on machines where it beats BLAS, for products of at least
    _blas.PACKED_MIN_COLS columns, with the packed weights kept between calls (``kept``) or
    enough columns in the batch to pay for packing them per call (_PACK_MIN_COLS), and
    products of at least _PACK_MIN_MACS multiply-adds (``macs``: rows x depth x ``cols``;
    None: not checked). Shapes only: never the thread count."""
    return (_blas.PACKED and cols >= _blas.PACKED_MIN_COLS
            and (kept or n * per_sample >= _PACK_MIN_COLS)
            and (macs is None or macs >= _PACK_MIN_MACS))


def pointwise_out_blocks(k_parts, c_out):
    """Blocks of output channels of a 1x1 convolution on the packed GEMM, in place of the
    ``k_parts`` blocks of input channels conv_tiles asked for (the tasks a small batch
    lacks): whole packed row blocks, so at most ceil(c_out / 6). At batch 1, 2 threads,
    128 -> 512 to 1024 -> 512 channels on 14x14 to 56x56 maps: 0.81-0.94x the time of
    input-channel blocks (whose partial outputs are added afterwards, and whose products
    each had a fraction of the reduction)."""
    return max(1, min(k_parts, -(-c_out // 6)))


def sample_group(n, geo, c_out, k_g, itemsize, kept):
    """Samples per task of an im2col / 1x1 forward pass on output maps smaller than a good
    GEMM's width (fewer than _blas.PACKED_MIN_COLS pixels): ``ceil(PACKED_MIN_COLS / P)``
    samples' column matrices side by side feed one packed-weight GEMM
    (_conv.conv2d_forward_grouped), when the packed GEMM runs here (packed_gemm) and the
    convolution is ungrouped; else 0 (tiles of one sample, BLAS). Shapes only."""
    p = geo.out_hw[0] * geo.out_hw[1]
    if geo.groups != 1 or p >= _blas.PACKED_MIN_COLS:
        return 0
    group = -(-_blas.PACKED_MIN_COLS // p)
    if not packed_gemm(n, min(n, group) * p, p, kept, c_out * k_g * group * p):
        return 0
    if (k_g + c_out) * group * p * itemsize > _TILE_BYTES * 4:
        return 0
    return group


def is_pointwise(geo, kh, kw):
    """A 1x1 stride-1 unpadded convolution: x is its own column matrix."""
    return (kh, kw, *geo.stride, *geo.padding) == (1, 1, 1, 1, 0, 0)


def use_rows(geo, c_in, c_out, kh, kw):
    """The direct row kernels (forward only) for an ungrouped convolution with few taps per
    output (``C_in * kh * kw <= _ROWS_MAX_TAPS``), few output channels and output rows of at
    least ``_ROWS_MIN_WIDTH`` (see the measurements at _ROWS_MAX_TAPS); not for 1x1 stride-1
    unpadded convolutions, whose GEMM reads x as it is."""
    return (geo.groups == 1 and c_in * kh * kw <= _ROWS_MAX_TAPS and c_out <= _ROWS_MAX_COUT
            and geo.out_hw[1] >= _ROWS_MIN_WIDTH and not is_pointwise(geo, kh, kw))


def conv_algorithm(geo, c_in, c_out, kh, kw, backward=False, n=None, kept=False,
                   itemsize=4):
    """``'winograd'``, ``'dense'``, ``'direct'``, ``'rows'``, ``'pointwise'`` or ``'im2col'``
    for a convolution with geometry ``geo`` on a batch of ``n`` (None: large enough for any
    algorithm), the gradients if ``backward``; ``kept``: the caller keeps weight transforms
    between calls (Winograd's, the dense matrix; see the module docstring); ``itemsize``:
    bytes per element."""
    if geo.groups > 1 and c_in == geo.groups:
        return "direct"
    if not backward and use_rows(geo, c_in, c_out, kh, kw):
        return "rows"
    if backward:
        min_channels, min_tiles = (_WINOGRAD_MIN_CHANNELS_BACKWARD,
                                   _WINOGRAD_MIN_BATCH_TILES_BACKWARD)
    else:
        min_channels = _WINOGRAD_MIN_CHANNELS
        min_tiles = _WINOGRAD_MIN_BATCH_TILES_KEPT if kept else _WINOGRAD_MIN_BATCH_TILES
    if ((kept and not backward or n is None or n >= _DENSE_MIN_BATCH)
            and use_dense(geo, c_in, c_out, kh, kw, itemsize)):
        return "dense"
    rules = (_WINOGRAD_FEW_OUT_RULES_PACKED if _blas.PACKED and not backward
             else _WINOGRAD_FEW_OUT_RULES)
    if use_winograd(geo, c_in, c_out, kh, kw, min_channels, n, min_tiles, rules):
        return "winograd"
    return "pointwise" if is_pointwise(geo, kh, kw) else "im2col"


def dw_chunks(n, c_out, k_g, itemsize):
    """Fixed batch chunks of the weight gradient: their number depends on shapes only."""
    return max(1, min(n, _MAX_DW_CHUNKS, _DW_CHUNK_BYTES // (c_out * k_g * itemsize)))


@functools.lru_cache(maxsize=1024)
def conv_tiles(n, c_out, c_g, k_g, ho, wo, itemsize, limit):
    """``(rows, n_tiles, k_parts, dx_blocks)`` of an im2col / 1x1 convolution of a batch of
    ``n`` with ``c_out`` output and ``c_g`` input channels per group (``k_g`` rows of the
    column matrix) and an ``ho x wo`` output: tiles of ``rows`` output rows (the last one
    shorter), whose column matrix (``k_g x rows*wo``) stays under _TILE_BYTES and ``limit``
    bytes (the workspace limit) and within 32-bit BLAS, unless a single row already is
    larger; per tile, ``k_parts`` blocks of input channels in the forward pass (each but the
    first writes a partial output of the batch's size, within ``limit``) and ``dx_blocks``
    in the input gradient. Shapes and limit only: never the thread count."""
    n = max(n, 1)  # an empty batch is planned as one sample (no kernel runs for it)
    row = k_g * wo * itemsize
    max_rows = max(1, min(_TILE_BYTES // row, limit // row, _BLAS_INT_MAX // (k_g * wo)))
    wanted = min(-(-_TARGET_TASKS // n), max(1, ho * wo // _MIN_TILE_COLS))
    n_tiles = min(ho, max(wanted, -(-ho // max_rows)))
    rows = -(-ho // n_tiles)  # tiles of equal height (but the last)
    n_tiles = -(-ho // rows)
    lacking = -(-_TARGET_TASKS // (n * n_tiles))
    blocks = max(1, min(lacking, c_g, k_g // _MIN_KBLOCK_ROWS))
    k_parts = max(1, min(lacking, c_g, k_g // _MIN_KPART_ROWS,
                         1 + limit // (n * c_out * ho * wo * itemsize)))
    return rows, n_tiles, k_parts, blocks


@functools.lru_cache(maxsize=1024)
def dw_split(n, n_tiles, p, c_out, c_g, k_g, itemsize, limit):
    """``(n_parts, n_kblocks)`` of the im2col weight gradient: the ``n * n_tiles`` (sample,
    tile) pairs are cut into ``n_parts`` ranges, each summed into its own partial
    (c_out x k_g) gradient, and the ``c_g`` input channels of a group into ``n_kblocks``
    blocks (columns of the gradient, no partial sums). Partials are kept for long
    reductions (``n*p`` output pixels; at most _MAX_DW_CHUNKS of them, within
    _DW_CHUNK_BYTES and the workspace limit); channel blocks make up the tasks a small
    batch lacks. Shapes and limit only: never the thread count."""
    parts = min(n * n_tiles, _MAX_DW_CHUNKS, n * p // _MIN_PART_COLS,
                min(_DW_CHUNK_BYTES, limit) // (c_out * k_g * itemsize))
    parts = max(1, parts)
    kblocks = 1
    if parts < _TARGET_TASKS:
        kblocks = min(-(-_TARGET_TASKS // parts), c_g, k_g // _MIN_KBLOCK_ROWS)
    return parts, max(1, kblocks)

"""The standard benchmark shapes and their work counts (FLOPs, bytes).

Conv shapes are ``(N, C_in, H, W) -> C_out`` with a square ``k x k`` kernel, stride ``s``,
padding ``p`` and ``groups``. Pool shapes are ``(N, C, H, W)`` with a square window.
"""

from dataclasses import asdict, dataclass, replace

__all__ = ["ConvShape", "PoolShape", "CONV_SHAPES", "POOL_SHAPES", "LENET_BATCHES",
           "out_size", "conv_out_hw", "conv_flops", "conv_backward_flops", "shape_flops",
           "pool_bytes",
           "scaled", "select"]


def out_size(size, k, s=1, p=0, d=1):
    """Output length of a convolution / pooling window: ``floor((n + 2p - d(k-1) - 1)/s) + 1``."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@dataclass(frozen=True)
class ConvShape:
    """One 2-D convolution problem.

    Attributes
    ----------
    name : str
        Short label printed in the table.
    n, c_in, h, w : int
        Input batch, channels, height, width.
    c_out, k, stride, padding, groups : int
        Output channels, square kernel size, stride, padding, channel groups.
    """

    name: str
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    k: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    @property
    def x_shape(self):
        return (self.n, self.c_in, self.h, self.w)

    @property
    def w_shape(self):
        return (self.c_out, self.c_in // self.groups, self.k, self.k)

    @property
    def y_shape(self):
        return (self.n, self.c_out, *conv_out_hw(self))

    def describe(self):
        """Compact text such as ``64x3x32x32>32 k3 p1``."""
        s = f"{self.n}x{self.c_in}x{self.h}x{self.w}>{self.c_out} k{self.k}"
        if self.stride != 1:
            s += f" s{self.stride}"
        if self.padding:
            s += f" p{self.padding}"
        if self.groups != 1:
            s += f" g{self.groups}"
        return s

    def as_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class PoolShape:
    """One 2-D pooling problem: ``kind`` is ``"max"`` or ``"avg"``, window ``k``, stride ``s``."""

    name: str
    kind: str
    n: int
    c: int
    h: int
    w: int
    k: int
    stride: int

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self):
        return (self.n, self.c, out_size(self.h, self.k, self.stride),
                out_size(self.w, self.k, self.stride))

    def describe(self):
        return f"{self.n}x{self.c}x{self.h}x{self.w} {self.k}x{self.k}/{self.stride}"

    def as_dict(self):
        return asdict(self)


CONV_SHAPES = (
    ConvShape("lenet-conv1", 64, 1, 28, 28, 6, 5, padding=2),
    ConvShape("lenet-conv2", 64, 6, 14, 14, 16, 5),
    ConvShape("cifar-conv1", 64, 3, 32, 32, 32, 3, padding=1),
    ConvShape("cifar-conv2", 64, 32, 32, 32, 64, 3, padding=1),
    ConvShape("cifar-conv3", 32, 64, 16, 16, 128, 3, padding=1),
    ConvShape("compute-bound", 8, 128, 56, 56, 128, 3, padding=1),
    ConvShape("alexnet-conv1", 8, 3, 224, 224, 64, 11, stride=4, padding=2),
    ConvShape("pointwise", 32, 256, 14, 14, 256, 1),
    ConvShape("depthwise", 32, 128, 28, 28, 128, 3, padding=1, groups=128),
)

POOL_SHAPES = (
    PoolShape("maxpool-2x2", "max", 64, 32, 32, 32, 2, 2),
    PoolShape("avgpool-2x2", "avg", 64, 32, 32, 32, 2, 2),
    PoolShape("maxpool-3x3s2", "max", 64, 32, 32, 32, 3, 2),
)

LENET_BATCHES = (64, 8)


def conv_out_hw(shape):
    """``(Ho, Wo)`` of a :class:`ConvShape`."""
    return (out_size(shape.h, shape.k, shape.stride, shape.padding),
            out_size(shape.w, shape.k, shape.stride, shape.padding))


def conv_flops(n, c_in, c_out, ho, wo, kh, kw, groups=1):
    """Forward FLOPs of a convolution: ``2 * N * C_out * Ho * Wo * (C_in/groups) * kh * kw``
    (one multiply and one add per weight tap; the bias is not counted)."""
    return 2 * n * c_out * ho * wo * (c_in // groups) * kh * kw


def conv_backward_flops(*args, **kwargs):
    """Backward FLOPs: twice the forward (the input gradient and the weight gradient are
    each one product of the forward's size; the bias gradient is not counted)."""
    return 2 * conv_flops(*args, **kwargs)


def shape_flops(shape, direction):
    """FLOPs of a :class:`ConvShape` for ``direction`` ``"fwd"`` or ``"bwd"``."""
    ho, wo = conv_out_hw(shape)
    f = conv_flops(shape.n, shape.c_in, shape.c_out, ho, wo, shape.k, shape.k, shape.groups)
    return f if direction == "fwd" else 2 * f


def pool_bytes(shape, direction, itemsize):
    """Bytes a pooling kernel must read and write, each array counted once.

    Forward reads ``x`` and writes ``y``. Max-pool backward reads ``grad_out`` and ``x``
    (to find each window's argmax) and writes ``grad_x``; avg-pool backward reads
    ``grad_out`` and writes ``grad_x``.
    """
    nx = shape.n * shape.c * shape.h * shape.w
    ny = 1
    for d in shape.y_shape:
        ny *= d
    if direction == "fwd":
        elems = nx + ny
    elif shape.kind == "max":
        elems = ny + 2 * nx
    else:
        elems = ny + nx
    return elems * itemsize


def scaled(shapes, divisor, minimum=1):
    """The shapes with their batch divided by ``divisor`` (at least ``minimum``)."""
    return tuple(replace(s, n=max(minimum, s.n // divisor)) for s in shapes)


def select(shapes, names):
    """The shapes whose name is in ``names`` (all of them when ``names`` is empty)."""
    if not names:
        return tuple(shapes)
    return tuple(s for s in shapes if s.name in names)

"""Containers: :class:`Sequential`, :class:`Residual` (``y = f(x) + shortcut(x)``) and
:class:`Concat` (channel concatenation of parallel branches, for DenseNet-style blocks)."""

import numpy as np

from .. import functional as F
from .activation import ReLU
from .base import Layer, layer_from_config, shape_str
from .norm import BatchNorm2d

__all__ = ["Sequential", "Residual", "Concat"]


def _as_layers(layers, where):
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
        layers = tuple(layers[0])
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{where}: argument {i} must be a Layer, got {type(layer).__name__}")
    return layers


def _scratch_output(y, *others):
    """``y`` if an in-place epilogue may overwrite it (a writeable C-contiguous array that
    shares no memory with ``others``, e.g. the input), else None (a new array). For fused
    inference models only: ``y`` may be cached by the layer that made it."""
    if y.flags.c_contiguous and y.flags.writeable and y.dtype.kind == "f" and not any(
            np.may_share_memory(y, o) for o in others):
        return y
    return None


def _bn_relu_pair(bn, relu):
    """Whether ``bn, relu`` run as one pass (:meth:`BatchNorm2d._forward_eval_relu`): an
    eval-mode BatchNorm2d followed by a ReLU, both of exactly these classes and with their
    own ``forward`` (not replaced on the instance, as SyncBatchNorm's conversion does). The
    output is the same array two layers compute (ReLU is exact), and both layers keep what
    their ``backward`` needs. DenseNet's BN-ReLU pairs, VGG-BN's and ResNet's stem."""
    return (type(bn) is BatchNorm2d and type(relu) is ReLU and not bn.training
            and "forward" not in bn.__dict__ and "forward" not in relu.__dict__)


def run_layers(layers, x):
    """``x`` through ``layers`` one after the other (Sequential's forward; the body of a zoo
    ResidualBlock), with each :func:`_bn_relu_pair` as one pass."""
    i, n = 0, len(layers)
    while i < n:
        layer = layers[i]
        if i + 1 < n and _bn_relu_pair(layer, layers[i + 1]):
            x = layer._forward_eval_relu(x)
            layers[i + 1]._x = x  # ReLU's gradient mask: x > 0 where its input is > 0
            i += 2
            continue
        x = layer.forward(x)
        i += 1
    return x


def _indent(text):
    return text.replace("\n", "\n  ")


class _Container(Layer):
    def fuse(self):
        """An inference-only copy with BatchNorm folded into the convolutions before it and
        ReLUs fused; this model is not changed. See :func:`cnncore.layers.fuse`."""
        from .fusion import fuse
        return fuse(self)

    def _fuse(self, fuse_child):
        """Replace each child by its fused version (called by :func:`cnncore.layers.fuse` on
        a copy); returns the layer that replaces ``self``."""
        self._set_children([(n, fuse_child(c)) for n, c in self._children.items()])
        return self

    def _set_children(self, items):
        self._children = dict(items)

    def extra_children_repr(self):
        return [f"({name}): {_indent(repr(child))}" for name, child in self._children.items()]

    def __repr__(self):
        lines = self.extra_children_repr()
        extra = self.extra_repr()
        head = f"{type(self).__name__}(" + (extra if extra else "")
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

    @classmethod
    def from_config(cls, config):
        children = [layer_from_config(c) for c in config.get("children", [])]
        return cls(*children, **config.get("config", {}))

    def summary_children(self, input_shape):
        """``[(name, child, child's input shape), ...]`` for :func:`cnncore.model.summary`."""
        return [(name, child, tuple(input_shape)) for name, child in self._children.items()]


class Sequential(_Container):
    """Layers applied one after the other; ``backward`` runs them in reverse.

    ``Sequential(l1, l2, ...)`` or ``Sequential([l1, l2, ...])``; children are named
    ``"0"``, ``"1"``, ... (parameter names ``"0.weight"``, ...). ``model[i]`` is the i-th layer.
    """

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(_as_layers(layers, "Sequential")):
            self.add_child(str(i), layer)
        self._layers = list(self._children.values())

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, i):
        return self._layers[i]

    def __iter__(self):
        return iter(self._layers)

    def _fuse(self, fuse_child):
        from .fusion import fuse_sequence
        self._set_children(fuse_sequence([(n, fuse_child(c)) for n, c in self._children.items()]))
        return self

    def _set_children(self, items):
        self._children = dict(items)
        self._layers = list(self._children.values())

    def append(self, layer):
        self.add_child(str(len(self._layers)), layer)
        self._layers.append(layer)
        return self

    def forward(self, x):
        return run_layers(self._layers, x)

    def backward(self, grad_out):
        for layer in reversed(self._layers):
            grad_out = layer.backward(grad_out)
        return grad_out

    def backward_params(self, grad_out):
        if not self._layers:
            return
        for layer in self._layers[:0:-1]:  # all but the first, last to second
            grad_out = layer.backward(grad_out)
        self._layers[0].backward_params(grad_out)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._layers:
            shape = tuple(layer.output_shape(shape))
        return shape

    def summary_children(self, input_shape):
        out, shape = [], tuple(input_shape)
        for name, child in self._children.items():
            out.append((name, child, shape))
            shape = tuple(child.output_shape(shape))
        return out


class Residual(_Container):
    """``y = body(x) + shortcut(x)``; without a shortcut ``y = body(x) + x``.

    Parameters
    ----------
    body : Layer or list of layers (wrapped in a Sequential)
    shortcut : Layer, optional
        Projection for the skip connection when the body changes the shape (e.g. a 1x1
        Conv2d with stride 2).
    """

    def __init__(self, body, shortcut=None):
        super().__init__()
        if isinstance(body, (list, tuple)):
            body = Sequential(*body)
        self.body = self.add_child("body", body)
        self.shortcut = None if shortcut is None else self.add_child("shortcut", shortcut)
        self._relu = False  # set by fuse(): add and ReLU in one pass (inference only)

    def _mismatch(self, a, b):
        return ValueError(f"Residual: the body's output {shape_str(a)} and the shortcut's "
                          f"{shape_str(b)} differ; give the Residual a shortcut projection "
                          f"(e.g. a 1x1 Conv2d) that matches them")

    def forward(self, x):
        y = self.body.forward(x)
        s = x if self.shortcut is None else self.shortcut.forward(x)
        if y.shape != s.shape:
            raise self._mismatch(y.shape, s.shape)
        if self._relu:
            return F.add_relu(y, s, out=_scratch_output(y, x, s))
        return y + s

    def _set_children(self, items):
        super()._set_children(items)
        self.body = self._children["body"]
        self.shortcut = self._children.get("shortcut")

    def _fuse_relu_after(self):
        self._relu = True

    def train(self, mode=True):
        if mode and self._relu:
            from .fusion import inference_only_error
            raise inference_only_error(self, "train mode")
        return super().train(mode)

    def backward(self, grad_out):
        if self._relu:
            from .fusion import inference_only_error
            raise inference_only_error(self, "backward()")
        g = self.body.backward(grad_out)
        if self.shortcut is None:
            return g + grad_out
        return g + self.shortcut.backward(grad_out)

    def extra_repr(self):
        return "relu=True, inference-only" if self._relu else ""

    def output_shape(self, input_shape):
        a = tuple(self.body.output_shape(input_shape))
        b = tuple(input_shape) if self.shortcut is None else tuple(
            self.shortcut.output_shape(input_shape))
        if a != b:
            raise self._mismatch(a, b)
        return a


class Concat(_Container):
    """Concatenate (along ``axis``, default channels) the outputs of several branches applied
    to the same input: ``Concat(Identity(), Sequential(BatchNorm2d(c), ReLU(), Conv2d(c, k, 3,
    padding=1)))`` is a DenseNet layer."""

    def __init__(self, *branches, axis=1):
        super().__init__()
        branches = _as_layers(branches, "Concat")
        if not branches:
            raise ValueError("Concat: needs at least one branch")
        for i, b in enumerate(branches):
            self.add_child(str(i), b)
        self._branches = list(self._children.values())
        if axis == 0:
            raise ValueError("Concat: axis 0 is the batch axis")
        self.axis = int(axis)
        self._sizes = None

    def _mismatch(self, shapes):
        return ValueError(f"{type(self).__name__}: branch outputs "
                          f"{', '.join(shape_str(s) for s in shapes)} differ outside axis "
                          f"{self.axis}")

    def forward(self, x):
        outs = [b.forward(x) for b in self._branches]
        ax = self.axis % outs[0].ndim
        ref = outs[0].shape[:ax] + outs[0].shape[ax + 1:]
        if any(o.shape[:ax] + o.shape[ax + 1:] != ref for o in outs):
            raise self._mismatch([o.shape for o in outs])
        self._sizes = [o.shape[ax] for o in outs]
        return np.concatenate(outs, axis=ax)

    def backward(self, grad_out):
        if self._sizes is None:
            raise self._backward_before_forward()
        ax = self.axis % grad_out.ndim
        bounds = np.cumsum(self._sizes)[:-1]
        parts = np.split(grad_out, bounds, axis=ax)
        gx = None
        for b, g in zip(self._branches, parts):
            gi = b.backward(np.ascontiguousarray(g))
            gx = gi.copy() if gx is None else np.add(gx, gi, out=gx)
        return gx

    def output_shape(self, input_shape):
        shapes = [tuple(b.output_shape(input_shape)) for b in self._branches]
        # Shapes have no batch axis: a positive axis moves down by one.
        ax = (self.axis - 1 if self.axis > 0 else self.axis) % len(shapes[0])
        ref = shapes[0][:ax] + shapes[0][ax + 1:]
        if any(s[:ax] + s[ax + 1:] != ref for s in shapes):
            raise self._mismatch(shapes)
        return shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1:]

    def get_config(self):
        return {"axis": self.axis}

    def _set_children(self, items):
        super()._set_children(items)
        self._branches = list(self._children.values())

    def extra_repr(self):
        return "" if self.axis == 1 else f"axis={self.axis}"

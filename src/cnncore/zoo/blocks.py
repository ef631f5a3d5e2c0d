"""Containers with named children, so that zoo models carry torchvision's parameter names.

* :class:`NamedSequential`: layers applied in order, each under a name (PyTorch's
  ``nn.Sequential(OrderedDict(...))``): ``layer1.0.conv1.weight`` instead of ``4.0.0.weight``.
  Children are reachable as attributes (``model.fc``, ``model.layer1[0].conv1``) and by name
  or position (``model["fc"]``, ``model[-1]``).
* :class:`ResidualBlock`: ResNet's basic and bottleneck blocks: ``activation(body(x) +
  shortcut(x))`` where the body is every child except the shortcut and the final activation.
* :class:`DenseLayer`: DenseNet's layer: ``concat([x, body(x)])`` along the channels.
* :class:`ResNet`, :class:`VGG`, :class:`AlexNet`, :class:`DenseNet`: :class:`NamedSequential`
  under the architecture's name (for ``repr`` and ``summary``); they add no behaviour.

Every container rebuilds from its ``get_config()`` (the names and, for blocks, which child is
the shortcut / activation), so zoo models save and load like any cnncore model.
"""

import numpy as np

from .. import functional as F
from ..layers.activation import ReLU
from ..layers.base import Layer
from ..layers.containers import Sequential, _as_layers, _scratch_output, run_layers

__all__ = ["NamedSequential", "ResidualBlock", "DenseLayer", "ResNet", "VGG", "AlexNet",
           "DenseNet"]


class NamedSequential(Sequential):
    """Layers applied one after the other, each under a name.

    ``NamedSequential({"conv1": Conv2d(...), "relu": ReLU()})`` or
    ``NamedSequential(layer_a, layer_b, names=["a", "b"])``. Names are non-empty strings
    without dots, all different; without ``names`` the children are ``"0"``, ``"1"``, ... as
    in :class:`cnncore.layers.Sequential`.
    """

    def __init__(self, *layers, names=None):
        Layer.__init__(self)
        if len(layers) == 1 and isinstance(layers[0], dict):
            if names is not None:
                raise TypeError(f"{type(self).__name__}: give the names as dict keys or as "
                                "names=, not both")
            names, layers = list(layers[0].keys()), tuple(layers[0].values())
        layers = _as_layers(layers, type(self).__name__)
        names = [str(i) for i in range(len(layers))] if names is None else list(names)
        self._check_names(names, len(layers))
        for name, layer in zip(names, layers):
            self.add_child(name, layer)
        self._layers = list(self._children.values())

    def _check_names(self, names, n):
        where = type(self).__name__
        if len(names) != n:
            raise ValueError(f"{where}: {n} layers but {len(names)} names")
        for name in names:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"{where}: child names must be non-empty strings without "
                                 f"dots, got {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: child names must differ, got {names}")

    def __getattr__(self, name):
        # Only called when normal lookup fails: expose the children as attributes.
        children = self.__dict__.get("_children")
        if children is not None and name in children:
            return children[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._children[key]
            except KeyError:
                raise KeyError(f"{type(self).__name__}: no child named {key!r} (children: "
                               f"{', '.join(self._children)})") from None
        return self._layers[key]

    def append(self, layer, name=None):
        name = str(len(self._layers)) if name is None else name
        self._check_names(list(self._children) + [name], len(self._layers) + 1)
        self.add_child(name, layer)
        self._layers.append(layer)
        return self

    def get_config(self):
        names = list(self._children)
        if names == [str(i) for i in range(len(names))]:
            return {}
        return {"names": names}


class ResidualBlock(NamedSequential):
    """``activation(body(x) + shortcut(x))`` with named children (ResNet's blocks).

    Parameters
    ----------
    *layers, names : as :class:`NamedSequential`
    shortcut : str, optional
        Name of the child applied to ``x`` on the skip path (torchvision: ``"downsample"``, a
        1x1 convolution and a batch norm); without it the skip path is the identity.
    activation : str, optional
        Name of the child applied after the sum (torchvision: ``"relu"``).

    Every other child, in order, is the body.
    """

    def __init__(self, *layers, names=None, shortcut=None, activation=None):
        super().__init__(*layers, names=names)
        for role, name in (("shortcut", shortcut), ("activation", activation)):
            if name is not None and name not in self._children:
                raise ValueError(f"ResidualBlock: {role} {name!r} is not one of the children "
                                 f"({', '.join(self._children)})")
        if shortcut is not None and shortcut == activation:
            raise ValueError("ResidualBlock: shortcut and activation must be different children")
        self._shortcut_name, self._activation_name = shortcut, activation
        self._fused = False  # set by fuse(): inference only, add + ReLU in place
        self._bind()

    def _bind(self):
        shortcut, activation = self._shortcut_name, self._activation_name
        self._body = [layer for name, layer in self._children.items()
                      if name not in (shortcut, activation)]
        self._sc = None if shortcut is None else self._children[shortcut]
        self._act = None if activation is None else self._children[activation]
        # a ReLU after the sum runs in the same pass as the sum (F.add_relu); its backward
        # needs only the block's output (out > 0 exactly where the sum is > 0)
        self._add_relu = type(self._act) is ReLU
        self._out = None

    def _set_children(self, items):
        super()._set_children(items)
        self._bind()

    def _fuse(self, fuse_child):
        from ..layers.fusion import fuse_sequence
        roles = (self._shortcut_name, self._activation_name)
        items = [(n, fuse_child(c)) for n, c in self._children.items()]
        body = fuse_sequence([(n, c) for n, c in items if n not in roles])
        self._set_children(body + [(n, c) for n, c in items if n in roles])
        self._fused = True
        return self

    def train(self, mode=True):
        if mode and self._fused:
            from ..layers.fusion import inference_only_error
            raise inference_only_error(self, "train mode")
        return super().train(mode)

    def append(self, layer, name=None):
        raise TypeError("ResidualBlock: children are fixed at construction")

    def forward(self, x):
        y = run_layers(self._body, x)
        s = x if self._sc is None else self._sc.forward(x)
        if y.shape != s.shape:
            raise self._mismatch(y.shape, s.shape)
        if self._add_relu:
            out = F.add_relu(y, s, out=_scratch_output(y, x, s) if self._fused else None)
            self._out = None if self._fused else out
            return out
        z = y + s
        return z if self._act is None else self._act.forward(z)

    def backward(self, grad_out):
        if self._fused:
            from ..layers.fusion import inference_only_error
            raise inference_only_error(self, "backward()")
        if self._add_relu:
            if self._out is None:
                raise self._backward_before_forward()
            g = F.relu_backward(grad_out, self._out)
        else:
            g = grad_out if self._act is None else self._act.backward(grad_out)
        gb = g
        for layer in reversed(self._body):
            gb = layer.backward(gb)
        gs = g if self._sc is None else self._sc.backward(g)
        return gb + gs

    def _mismatch(self, a, b):
        return ValueError(f"ResidualBlock: the body's output {tuple(a)} and the shortcut's "
                          f"{tuple(b)} differ")

    def _shapes(self, input_shape):
        """{child name: its input shape} and the block's output shape."""
        shapes, shape = {}, tuple(input_shape)
        for name, layer in self._children.items():
            if layer is self._sc or layer is self._act:
                continue
            shapes[name] = shape
            shape = tuple(layer.output_shape(shape))
        skip = tuple(input_shape)
        if self._sc is not None:
            shapes[self._shortcut_name] = skip
            skip = tuple(self._sc.output_shape(skip))
        if skip != shape:
            raise self._mismatch(shape, skip)
        if self._act is not None:
            shapes[self._activation_name] = shape
            shape = tuple(self._act.output_shape(shape))
        return shapes, shape

    def output_shape(self, input_shape):
        return self._shapes(input_shape)[1]

    def summary_children(self, input_shape):
        shapes = self._shapes(input_shape)[0]
        return [(name, child, shapes[name]) for name, child in self._children.items()]

    def get_config(self):
        return dict(super().get_config(), shortcut=self._shortcut_name,
                    activation=self._activation_name)

    def extra_repr(self):
        parts = []
        if self._shortcut_name is not None:
            parts.append(f"shortcut={self._shortcut_name!r}")
        if self._activation_name is not None:
            parts.append(f"activation={self._activation_name!r}")
        if self._fused:
            parts.append("inference-only")
        return ", ".join(parts)


class DenseLayer(NamedSequential):
    """``concat([x, body(x)], axis=1)``: a DenseNet layer whose body (BN-ReLU-Conv1x1-BN-
    ReLU-Conv3x3 in DenseNet-BC) adds ``growth_rate`` channels to its input."""

    def forward(self, x):
        y = super().forward(x)
        if y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
            raise ValueError(f"DenseLayer: the body's output {y.shape} does not match the "
                             f"input {x.shape} outside the channel axis")
        self._c_in = x.shape[1]
        return np.concatenate([x, y], axis=1)

    def backward(self, grad_out):
        c = getattr(self, "_c_in", None)
        if c is None:
            raise self._backward_before_forward()
        g_body = super().backward(np.ascontiguousarray(grad_out[:, c:]))
        return g_body + grad_out[:, :c]

    def output_shape(self, input_shape):
        y = super().output_shape(input_shape)
        if tuple(y[1:]) != tuple(input_shape[1:]):
            raise ValueError(f"DenseLayer: the body's output {tuple(y)} does not match the "
                             f"input {tuple(input_shape)} outside the channel axis")
        return (input_shape[0] + y[0],) + tuple(input_shape[1:])


class ResNet(NamedSequential):
    """A ResNet (He et al., 2015) with torchvision's children: conv1, bn1, relu, maxpool,
    layer1..layer4, avgpool, flatten, fc. Built by :func:`cnncore.zoo.resnet`."""


class VGG(NamedSequential):
    """A VGG network (Simonyan & Zisserman, 2015) with torchvision's children: features,
    avgpool, flatten, classifier. Built by :func:`cnncore.zoo.vgg`."""


class AlexNet(NamedSequential):
    """AlexNet (Krizhevsky et al., 2012): features, [avgpool,] flatten, classifier. Built by
    :func:`cnncore.zoo.alexnet`."""


class DenseNet(NamedSequential):
    """A DenseNet (Huang et al., 2017) with torchvision's children: features, relu, avgpool,
    flatten, classifier. Built by :func:`cnncore.zoo.densenet`."""

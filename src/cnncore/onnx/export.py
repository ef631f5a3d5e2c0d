"""``cnncore.onnx.export``: a cnncore model as an ONNX graph of standard operators.

The model is not run: its structure is walked, each layer is written as the operators of
:data:`EXPORTERS` (see :mod:`cnncore.onnx.ops` for the table), and shapes are propagated with
``output_shape``. Eval-mode semantics: BatchNormalization uses the running statistics,
Dropout is written as an inference-mode ``Dropout`` (the identity; its ratio is kept so that
:func:`cnncore.onnx.load` gives back a Dropout layer).
"""

import numpy as np

from .._version import __version__
from ..layers import (Add, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Concat,
                      Concatenate, ConstantPad2d, Conv1d, Conv2d, Dropout, Flatten,
                      GlobalAvgPool2d, Graph, Identity, LeakyReLU, Linear, LocalResponseNorm,
                      MaxPool2d, ReLU, Residual, Sequential, Sigmoid, Softmax, Tanh)
from ..layers.adaptive import _plan as _adaptive_plan, adaptive_pool_matrix
from ._common import require_onnx

__all__ = ["export", "to_model_proto", "EXPORTERS", "MIN_OPSET"]

MIN_OPSET = 13  # Softmax / Dropout / Pad with today's semantics


class ExportError(ValueError):
    """Some layers have no ONNX mapping (the message lists them all)."""


class _Writer:
    """Accumulates nodes and initializers; gives unique tensor names."""

    def __init__(self, onnx, dtype, opset):
        self.onnx, self.helper = onnx, onnx.helper
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.nodes, self.initializers = [], []
        self.used = set()
        self.unsupported = []   # [(layer name, class name, reason)]

    def unique(self, base):
        base = base or "t"
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name

    def const(self, name, array, dtype=None):
        array = np.array(array, dtype=self.dtype if dtype is None else dtype, order="C")
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, name, **attrs):
        out = self.unique(name)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


def _dims(*pairs):
    return [int(v) for v in pairs]


# ---------------------------------------------------------------------------- leaf layers
def _conv(w, layer, name, x, shape):
    inputs = [x, w.const(name + ".weight", layer.weight.data)]
    if layer.bias is not None:
        inputs.append(w.const(name + ".bias", layer.bias.data))
    pads = list(layer._pad) * 2
    return w.node("Conv", inputs, name, kernel_shape=_dims(*layer.kernel_size),
                  strides=_dims(*layer.stride), pads=_dims(*pads),
                  dilations=_dims(*layer.dilation), group=int(layer.groups))


def _linear(w, layer, name, x, shape):
    inputs = [x, w.const(name + ".weight", layer.weight.data)]
    if layer.bias is not None:
        inputs.append(w.const(name + ".bias", layer.bias.data))
    return w.node("Gemm", inputs, name, transB=1)


def _batchnorm(w, layer, name, x, shape):
    inputs = [x] + [w.const(f"{name}.{p}", a) for p, a in (
        ("weight", layer.weight.data), ("bias", layer.bias.data),
        ("running_mean", layer.running_mean), ("running_var", layer.running_var))]
    return w.node("BatchNormalization", inputs, name, epsilon=float(layer.eps),
                  momentum=float(1.0 - layer.momentum))


def _simple(op):
    def f(w, layer, name, x, shape):
        return w.node(op, [x], name)
    return f


def _leaky(w, layer, name, x, shape):
    return w.node("LeakyRelu", [x], name, alpha=float(layer.negative_slope))


def _softmax(w, layer, name, x, shape):
    return w.node("Softmax", [x], name, axis=int(layer.axis))


def _pool_attrs(layer):
    return dict(kernel_shape=_dims(*layer.kernel_size), strides=_dims(*layer.stride),
                pads=_dims(*(list(layer.padding) * 2)))


def _maxpool(w, layer, name, x, shape):
    return w.node("MaxPool", [x], name, **_pool_attrs(layer))


def _avgpool(w, layer, name, x, shape):
    return w.node("AveragePool", [x], name, count_include_pad=int(layer.count_include_pad),
                  **_pool_attrs(layer))


def _global_avg(w, layer, name, x, shape):
    y = w.node("GlobalAveragePool", [x], name + ".pool")
    return w.node("Flatten", [y], name, axis=1)


def _adaptive(w, layer, name, x, shape):
    c, h, wd = shape
    oh, ow = layer._out(h, wd)
    plan = _adaptive_plan((h, wd), (oh, ow))
    if plan == "identity":
        return w.node("Identity", [x], name)
    if plan == "global":
        return w.node("GlobalAveragePool", [x], name)
    if plan == "pool":
        k = _dims(h // oh, wd // ow)
        return w.node("AveragePool", [x], name, kernel_shape=k, strides=k)
    # y = A_h @ x @ A_w.T, as in cnncore.layers.adaptive (MatMul broadcasts over N, C).
    aw_t = w.const(name + ".cols", adaptive_pool_matrix(wd, ow, np.float64).T)
    ah = w.const(name + ".rows", adaptive_pool_matrix(h, oh, np.float64))
    t = w.node("MatMul", [x, aw_t], name + ".w")
    return w.node("MatMul", [ah, t], name)


def _flatten(w, layer, name, x, shape):
    return w.node("Flatten", [x], name, axis=1)


def _identity(w, layer, name, x, shape):
    return w.node("Identity", [x], name)


def _dropout(w, layer, name, x, shape):
    ratio = w.const(name + ".ratio", np.array(layer.p))
    return w.node("Dropout", [x, ratio], name)


def _lrn(w, layer, name, x, shape):
    if layer.size % 2 == 0:
        # ONNX's window is [c - (size-1)//2, c + size//2], PyTorch's (and cnncore's)
        # [c - size//2, c + (size-1)//2]: they agree for odd sizes only.
        raise _Unsupported("an even LRN size places the window differently in ONNX")
    return w.node("LRN", [x], name, size=int(layer.size), alpha=float(layer.alpha),
                  beta=float(layer.beta), bias=float(layer.k))


def _pad(w, layer, name, x, shape):
    left, right, top, bottom = layer.padding
    pads = w.const(name + ".pads", np.array([0, 0, top, left, 0, 0, bottom, right]), np.int64)
    value = w.const(name + ".value", np.array(layer.value))
    return w.node("Pad", [x, pads, value], name, mode="constant")


def _add(w, layer, name, xs, shapes):
    y = w.node("Add", xs[:2], name if len(xs) == 2 else name + ".0")
    for i, x in enumerate(xs[2:], 1):
        y = w.node("Add", [y, x], name if i == len(xs) - 2 else f"{name}.{i}")
    return y


def _concatenate(w, layer, name, xs, shapes):
    return w.node("Concat", xs, name, axis=int(layer.axis))


# ---------------------------------------------------------------------------- containers
def _sequential(w, layer, name, x, shape):
    for cname, child in layer.named_children():
        x, shape = _emit(w, child, _join(name, cname), x, shape)
    return x, shape


def _residual(w, layer, name, x, shape):
    y, ys = _emit(w, layer.body, _join(name, "body"), x, shape)
    s, ss = (x, shape) if layer.shortcut is None else _emit(
        w, layer.shortcut, _join(name, "shortcut"), x, shape)
    return w.node("Add", [y, s], _join(name, "add")), ys


def _concat_container(w, layer, name, x, shape):
    outs = [_emit(w, b, _join(name, cname), x, shape)[0]
            for cname, b in layer.named_children()]
    return w.node("Concat", outs, _join(name, "concat"), axis=int(layer.axis)), \
        layer.output_shape(shape)


def _residual_block(w, layer, name, x, shape):
    y, ys = x, shape
    for cname, child in layer.named_children():
        if child is layer._sc or child is layer._act:
            continue
        y, ys = _emit(w, child, _join(name, cname), y, ys)
    s = x if layer._sc is None else _emit(w, layer._sc, _join(name, layer._shortcut_name),
                                          x, shape)[0]
    y = w.node("Add", [y, s], _join(name, "add"))
    if layer._act is not None:
        y, ys = _emit(w, layer._act, _join(name, layer._activation_name), y, ys)
    return y, ys


def _dense_layer(w, layer, name, x, shape):
    y, _ = _sequential(w, layer, name, x, shape)
    return w.node("Concat", [x, y], _join(name, "concat"), axis=1), layer.output_shape(shape)


def _graph(w, layer, name, x, shape):
    values = {layer.input_name: (x, tuple(shape))}
    for node, child, inputs in layer.nodes:
        if getattr(child, "multi_input", False):
            values[node] = _emit(w, child, _join(name, node), [values[i][0] for i in inputs],
                                 [values[i][1] for i in inputs])
        else:
            values[node] = _emit(w, child, _join(name, node), *values[inputs[0]])
    outs = [values[o] for o in layer.outputs]
    if len(outs) == 1:
        return outs[0]
    return [o[0] for o in outs], [o[1] for o in outs]


#: layer class -> writer. Leaf writers return the output tensor's name (the shape comes from
#: ``output_shape``); container writers (in :data:`CONTAINERS`) return ``(name, shape)``.
EXPORTERS = {
    Conv2d: _conv, Conv1d: _conv, Linear: _linear,
    BatchNorm2d: _batchnorm, BatchNorm1d: _batchnorm,
    ReLU: _simple("Relu"), Sigmoid: _simple("Sigmoid"), Tanh: _simple("Tanh"),
    LeakyReLU: _leaky, Softmax: _softmax,
    MaxPool2d: _maxpool, AvgPool2d: _avgpool, GlobalAvgPool2d: _global_avg,
    AdaptiveAvgPool2d: _adaptive, Flatten: _flatten, Identity: _identity, Dropout: _dropout,
    LocalResponseNorm: _lrn, ConstantPad2d: _pad,
    Add: _add, Concatenate: _concatenate,
    Sequential: _sequential, Residual: _residual, Concat: _concat_container, Graph: _graph,
}
CONTAINERS = {Sequential, Residual, Concat, Graph}


def _add_zoo_blocks():
    """The zoo's blocks, added on first use (``import cnncore`` does not import the zoo)."""
    from ..zoo.blocks import DenseLayer, ResidualBlock
    EXPORTERS.setdefault(ResidualBlock, _residual_block)
    EXPORTERS.setdefault(DenseLayer, _dense_layer)
    CONTAINERS.update((ResidualBlock, DenseLayer))


class _Unsupported(Exception):
    pass


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _writer_for(layer):
    """The writer of the nearest class in ``layer``'s MRO that has one, provided the layer
    computes what that class computes (it does not override ``forward``): a subclass of
    Sequential with its own forward is not a Sequential for export."""
    for cls in type(layer).__mro__:
        if cls in EXPORTERS:
            if type(layer).forward is not cls.forward:
                return None, None
            return EXPORTERS[cls], cls
    return None, None


def _emit(w, layer, name, x, shape):
    fn, cls = _writer_for(layer)
    if fn is None:
        w.unsupported.append((name or "(model)", type(layer).__name__,
                              "no ONNX mapping (a custom layer or a forward override)"))
    elif cls in CONTAINERS:
        return fn(w, layer, name, x, shape)
    out_shape = layer.output_shape(shape)
    if fn is not None:
        try:
            return fn(w, layer, name or type(layer).__name__.lower(), x, shape), out_shape
        except _Unsupported as e:
            w.unsupported.append((name or "(model)", type(layer).__name__, str(e)))
    return w.unique((name or "unsupported") + ".unsupported"), out_shape


def _elem_type(onnx, dtype):
    return {np.dtype(np.float32): onnx.TensorProto.FLOAT,
            np.dtype(np.float64): onnx.TensorProto.DOUBLE}[np.dtype(dtype)]


def to_model_proto(model, input_shape=None, opset=17, dynamic_batch=True):
    """The ``onnx.ModelProto`` that :func:`export` writes (nothing written to disk)."""
    onnx = require_onnx("cnncore.onnx.export")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError("cnncore.onnx.export: pass input_shape, the shape of one sample "
                             "without the batch axis, e.g. (3, 32, 32)")
    input_shape = tuple(int(s) for s in input_shape)
    opset = int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"cnncore.onnx.export: opset must be in {MIN_OPSET}..{newest} (the "
                         f"installed onnx {onnx.__version__}), got {opset}")
    _add_zoo_blocks()
    dtype = model.dtype or np.dtype(np.float32)
    w = _Writer(onnx, dtype, opset)
    w.used.add("input")
    y, out_shape = _emit(w, model, "", "input", input_shape)
    if w.unsupported:
        lines = "\n".join(f"  - {name} ({cls}): {why}" for name, cls, why in w.unsupported)
        raise ExportError(f"cnncore.onnx.export: {len(w.unsupported)} layer(s) cannot be "
                          f"exported:\n{lines}\nExportable layers: "
                          f"{', '.join(sorted(c.__name__ for c in EXPORTERS))}")
    ys, shapes = ([y], [out_shape]) if isinstance(y, str) else (y, out_shape)
    helper = onnx.helper
    elem = _elem_type(onnx, dtype)
    batch = "N" if dynamic_batch else 1
    outputs = []
    for i, (t, s) in enumerate(zip(ys, shapes)):
        out = "output" if len(ys) == 1 else f"output{i}"
        w.nodes.append(helper.make_node("Identity", [t], [out], name=out))
        outputs.append(helper.make_tensor_value_info(out, elem, [batch] + list(s)))
    graph = helper.make_graph(
        w.nodes, type(model).__name__,
        [helper.make_tensor_value_info("input", elem, [batch] + list(input_shape))],
        outputs, initializer=w.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="cnncore",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    proto.doc_string = f"cnncore {type(model).__name__}, eval mode"
    onnx.checker.check_model(proto)
    return proto


def export(model, path, input_shape=None, opset=17, dynamic_batch=True):
    """Write ``model`` (eval-mode semantics) to the ONNX file ``path``.

    Parameters
    ----------
    model : Layer
        A layer or container of :data:`EXPORTERS` (every cnncore layer and the zoo's
        blocks), possibly nested, including :class:`cnncore.layers.Graph`.
    path : str or os.PathLike
    input_shape : tuple, optional
        One sample's shape without the batch axis, e.g. ``(3, 32, 32)``; default
        ``model.input_shape`` (set by the zoo).
    opset : int
        ONNX opset (13 or newer; default 17).
    dynamic_batch : bool
        Batch axis named ``N`` (any batch size); False fixes it to 1.

    Returns
    -------
    onnx.ModelProto
        What was written (it passed ``onnx.checker.check_model``). The graph's input is
        named ``input``, its output ``output`` (``output0``, ``output1``, ... for a Graph
        with several outputs); initializers carry cnncore's parameter names.

    Raises
    ------
    ValueError
        Listing every layer that has no ONNX mapping, with its name in the model.
    """
    proto = to_model_proto(model, input_shape=input_shape, opset=opset,
                           dynamic_batch=dynamic_batch)
    onnx = require_onnx("cnncore.onnx.export")
    onnx.save(proto, path)
    return proto

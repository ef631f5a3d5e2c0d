"""``cnncore.onnx.load``: an ONNX graph as a cnncore model.

Each ONNX node becomes zero, one or a few cnncore layers (:data:`IMPORTERS`); what is
computable without the input (initializers, ``Constant``, and the shape arithmetic PyTorch
writes for ``x.view(x.size(0), -1)``: Shape, Gather, Unsqueeze, Concat, ...) is evaluated at
load time. A constant added to the output of a Gemm / MatMul / Conv (and read by nothing
else) becomes its bias. Nodes that no graph output depends on are dropped. The result is a
:class:`~cnncore.layers.Sequential` when the layers form a chain with one output, otherwise
a :class:`~cnncore.layers.Graph`.
"""

import os
import re

import numpy as np

from ..layers import (Add, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                      Concatenate, ConstantPad2d, Conv1d, Conv2d, Dropout, Flatten, Graph,
                      Identity, LeakyReLU, Linear, LocalResponseNorm, MaxPool2d, ReLU,
                      Sequential, Sigmoid, Softmax, Tanh, ZeroPad2d)
from ..layers.adaptive import adaptive_pool_matrix
from ._common import require_onnx

__all__ = ["load", "IMPORTERS", "UnsupportedOperators"]


class UnsupportedOperators(ValueError):
    """The graph uses operators (or operator settings) cnncore cannot run; ``problems`` is
    the list of ``(op_type, node name, node index, reason)``."""

    def __init__(self, message, problems):
        super().__init__(message)
        self.problems = problems


class _Unsupported(Exception):
    pass


class _Batch:
    """The batch size in shape arithmetic (unknown until the model runs)."""

    def __repr__(self):
        return "N"


BATCH = _Batch()


class _Tensor:
    """An activation: produced by a cnncore node (``node`` its index, None for the graph
    input), with its shape without the batch axis (None when unknown)."""

    __slots__ = ("name", "node", "shape")

    def __init__(self, name, node, shape):
        self.name, self.node, self.shape = name, node, shape


class _Loader:
    def __init__(self, onnx, proto, where):
        self.onnx, self.where = onnx, where
        self.graph = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                          None)
        self.consts = {}   # ONNX tensor name -> ndarray (object arrays for shapes with N)
        self.acts = {}     # ONNX tensor name -> _Tensor
        self.nodes = []    # [name, layer, [input tensor names], output tensor name]
        self.problems = []
        self.node_names = set()
        self.consumers = {}    # ONNX tensor name -> number of readers (graph outputs too)
        self.onnx_names = {}   # cnncore tensor name -> ONNX names bound to it
        self.batch = None
        self.failed = set()    # ONNX tensors an unsupported node should have made
        for node in self.graph.node:
            for i in node.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in self.graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1

    # ------------------------------------------------------------------ helpers
    def attrs(self, node):
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(self, name, what="this input"):
        if name not in self.consts:
            raise _Unsupported(f"{what} must be a constant (an initializer)")
        return self.consts[name]

    def act(self, name):
        if name in self.consts:
            raise _Unsupported(f"input {name!r} is a constant where an activation is expected")
        return self.acts[name]

    def node_name(self, base):
        base = re.sub(r"[^0-9A-Za-z_]+", "_", base).strip("_") or "node"
        if base[0].isdigit():
            base = "n" + base
        name, k = base, 1
        while name in self.node_names:
            name = f"{base}_{k}"
            k += 1
        self.node_names.add(name)
        return name

    def emit(self, layer, inputs, base, shape=None):
        """Append a cnncore node reading the tensors ``inputs``; returns its output _Tensor."""
        ins = [self.acts[i] if isinstance(i, str) else i for i in inputs]
        if shape is None and all(t.shape is not None for t in ins):
            try:
                shape = tuple(layer.output_shape([t.shape for t in ins]) if len(ins) > 1
                              else layer.output_shape(ins[0].shape))
            except ValueError as e:
                raise _Unsupported(f"shapes do not fit: {e}") from None
        name = self.node_name(base)
        self.nodes.append([name, layer, [t.name for t in ins], name])
        return _Tensor(name, len(self.nodes) - 1, shape)

    def set_weights(self, layer, weight, bias=None):
        layer.weight.data[...] = np.asarray(weight, dtype=layer.weight.data.dtype)
        if bias is not None:
            layer.bias.data[...] = np.asarray(bias, dtype=layer.bias.data.dtype)


# ------------------------------------------------------------------------- shape arithmetic
def _shape(ld, node, a):
    t = ld.acts.get(node.input[0])
    if t is None or t.shape is None:
        raise _Unsupported("Shape of a tensor whose shape is unknown at load time")
    out = np.array([BATCH] + list(t.shape), dtype=object)
    start, end = a.get("start", 0), a.get("end", None)
    return out[start:end]


def _to_int_array(v):
    return np.array(v, dtype=object) if np.asarray(v).dtype == object else np.asarray(v)


def _gather(ld, node, a):
    data, idx = ld.const(node.input[0]), ld.const(node.input[1])
    return np.take(_to_int_array(data), np.asarray(idx, dtype=np.int64), axis=a.get("axis", 0))


def _axes(ld, node, a, position=1):
    if "axes" in a:
        return list(a["axes"])
    if len(node.input) > position and node.input[position]:
        return [int(v) for v in ld.const(node.input[position])]
    return None


def _unsqueeze(ld, node, a):
    data = _to_int_array(ld.const(node.input[0]))
    axes = _axes(ld, node, a)
    rank = data.ndim + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        data = np.expand_dims(data, ax)
    return data


def _squeeze(ld, node, a):
    data = _to_int_array(ld.const(node.input[0]))
    axes = _axes(ld, node, a)
    return np.squeeze(data, axis=None if axes is None else tuple(axes))


def _concat_const(ld, node, a):
    parts = [_to_int_array(ld.const(i)) for i in node.input]
    if any(p.dtype == object for p in parts):
        parts = [p.astype(object) for p in parts]
    return np.concatenate(parts, axis=a["axis"])


def _cast(ld, node, a):
    data = ld.const(node.input[0])
    if data.dtype == object:
        return data
    return data.astype(ld.onnx.helper.tensor_dtype_to_np_dtype(a["to"]))


def _reshape_const(ld, node, a):
    data, shape = ld.const(node.input[0]), [int(s) for s in ld.const(node.input[1])]
    shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return data.reshape(shape)


def _constant(ld, node, a):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            return ld.onnx.numpy_helper.to_array(v) if key == "value" else np.array(v)
    raise _Unsupported(f"Constant with attributes {sorted(a)}")


#: Operators evaluated at load time when all their inputs are constants (Shape: when the
#: shape of its input is known).
CONSTANT_OPS = {"Constant": _constant, "Identity": lambda ld, n, a: ld.const(n.input[0]),
                "Shape": _shape, "Gather": _gather, "Unsqueeze": _unsqueeze,
                "Squeeze": _squeeze, "Concat": _concat_const, "Cast": _cast,
                "Reshape": _reshape_const}


def _fold(ld, node, a):
    """Evaluate a node whose inputs are all constants: shape arithmetic holding the batch
    symbol with :data:`CONSTANT_OPS`, anything numeric with onnx's reference evaluator."""
    symbolic = any(ld.consts[i].dtype == object for i in node.input if i)
    if node.op_type in CONSTANT_OPS and (symbolic or node.op_type != "Shape"):
        value = CONSTANT_OPS[node.op_type](ld, node, a)
        return [np.asarray(value, dtype=object if isinstance(value, _Batch) else None)]
    if symbolic:
        raise _Unsupported("shape arithmetic on the batch size other than "
                           f"{', '.join(sorted(CONSTANT_OPS))}")
    from onnx.reference import ReferenceEvaluator
    try:
        outs = ReferenceEvaluator(node).run(None, {i: ld.consts[i] for i in node.input if i})
    except Exception as e:  # the evaluator's own errors: not a standard operator, bad node
        raise _Unsupported(f"cannot evaluate this constant expression ({type(e).__name__}: "
                           f"{e})") from None
    return [np.asarray(o) for o in outs]


# ------------------------------------------------------------------------- layers
def _check_spatial(op, kernel, what="kernel"):
    if len(kernel) not in (1, 2):
        raise _Unsupported(f"{len(kernel)}-D {op} (cnncore has 1-D and 2-D)")


def _resolve_pads(a, x, kernel, strides, dilations):
    """``(begin..., end...)`` pads from ``pads`` or ``auto_pad``."""
    nd = len(kernel)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(a.get("pads", [0] * 2 * nd))
    if auto == "VALID":
        return [0] * 2 * nd
    if x.shape is None:
        raise _Unsupported(f"auto_pad={auto} needs the input's spatial size")
    begin, end = [], []
    for size, k, s, d in zip(x.shape[1:], kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _pad_layer(value, begin, end, nd):
    if nd == 1:
        raise _Unsupported("uneven padding of a 1-D operator")
    padding = (begin[1], end[1], begin[0], end[0])
    return ZeroPad2d(padding) if value == 0 else ConstantPad2d(padding, value)


def _conv(ld, node, a):
    x = ld.act(node.input[0])
    w = ld.const(node.input[1], "the weight")
    b = ld.const(node.input[2], "the bias") if len(node.input) > 2 and node.input[2] else None
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    _check_spatial("Conv", kernel)
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    group = int(a.get("group", 1))
    pads = _resolve_pads(a, x, kernel, strides, dil)
    begin, end = pads[:nd], pads[nd:]
    if begin != end:
        x = ld.emit(_pad_layer(0.0, begin, end, nd), [x], node.name + "_pad")
        begin = [0] * nd
    cls = Conv2d if nd == 2 else Conv1d
    arg = (lambda v: v) if nd == 2 else (lambda v: v[0])
    layer = cls(w.shape[1] * group, w.shape[0], arg(kernel), stride=arg(strides),
                padding=arg(begin), dilation=arg(dil), groups=group, bias=b is not None,
                dtype=ld.dtype)
    ld.set_weights(layer, w, b)
    return ld.emit(layer, [x], node.name or "conv")


def _gemm(ld, node, a):
    x = ld.act(node.input[0])
    if a.get("transA", 0):
        raise _Unsupported("transA=1")
    w = np.asarray(ld.const(node.input[1], "B"), dtype=np.float64)
    if w.ndim != 2:
        raise _Unsupported("B must be 2-D")
    w = w if a.get("transB", 0) else w.T
    w = w * a.get("alpha", 1.0)
    b = None
    if len(node.input) > 2 and node.input[2]:
        c = np.asarray(ld.const(node.input[2], "C"), dtype=np.float64) * a.get("beta", 1.0)
        b = np.broadcast_to(c.reshape(-1) if c.size == w.shape[0] else c, (w.shape[0],))
    if x.shape is not None and len(x.shape) != 1:
        raise _Unsupported(f"input of shape (N, {', '.join(map(str, x.shape))}): Gemm takes 2-D")
    layer = Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=ld.dtype)
    ld.set_weights(layer, w, b)
    return ld.emit(layer, [x], node.name or "gemm")


def _adaptive_half(ld, node, x, m, axis):
    """``x @ A.T`` (axis W) or ``A @ x`` (axis H) with ``A`` an adaptive-pool averaging
    matrix (how export writes AdaptiveAvgPool2d): an AdaptiveAvgPool2d over that axis."""
    if x.shape is None or len(x.shape) != 3 or m.ndim != 2:
        return None
    size = x.shape[2 if axis == "W" else 1]
    a = m.T if axis == "W" else m
    if a.shape[1] != size or not np.allclose(a, adaptive_pool_matrix(size, a.shape[0]),
                                              rtol=1e-6, atol=1e-7):
        return None
    if axis == "H" and x.node is not None and len(ld.onnx_names.get(x.name, [])) == 1 \
            and ld.consumers.get(ld.onnx_names[x.name][0]) == 1:
        prev = ld.nodes[x.node][1]
        if isinstance(prev, AdaptiveAvgPool2d) and prev.output_size[0] is None:
            prev.output_size = (a.shape[0], prev.output_size[1])  # one pool for both axes
            return _Tensor(x.name, x.node, (x.shape[0], a.shape[0], x.shape[2]))
    out = (None, a.shape[0]) if axis == "W" else (a.shape[0], None)
    return ld.emit(AdaptiveAvgPool2d(out), [x], node.name or "adaptiveavgpool")


def _matmul(ld, node, a):
    if node.input[0] in ld.consts:
        t = _adaptive_half(ld, node, ld.act(node.input[1]), ld.consts[node.input[0]], "H")
        if t is None:
            raise _Unsupported("a constant times an activation (other than an adaptive "
                               "average pool's rows)")
        return t
    x = ld.act(node.input[0])
    w = ld.const(node.input[1], "the second input (a weight matrix)")
    if w.ndim != 2:
        raise _Unsupported("the weight must be 2-D")
    if x.shape is not None and len(x.shape) != 1:
        t = _adaptive_half(ld, node, x, w, "W")
        if t is None:
            raise _Unsupported("MatMul of an input with more than 2 dimensions (other than "
                               "an adaptive average pool's columns)")
        return t
    layer = Linear(w.shape[0], w.shape[1], bias=False, dtype=ld.dtype)
    ld.set_weights(layer, np.asarray(w).T)
    return ld.emit(layer, [x], node.name or "matmul")


def _batchnorm(ld, node, a):
    if len(node.output) > 1 and any(node.output[1:]):
        raise _Unsupported("training-mode outputs (running mean / var)")
    if a.get("training_mode", 0):
        raise _Unsupported("training_mode=1")
    x = ld.act(node.input[0])
    scale, bias, mean, var = (ld.const(i) for i in node.input[1:5])
    rank = None if x.shape is None else len(x.shape) + 1
    cls = BatchNorm2d if rank == 4 or rank is None else BatchNorm1d
    if rank is not None and rank not in (2, 3, 4):
        raise _Unsupported(f"BatchNormalization of a {rank}-D input")
    layer = cls(scale.shape[0], eps=float(a.get("epsilon", 1e-5)),
                momentum=round(1.0 - float(a.get("momentum", 0.9)), 12), dtype=ld.dtype)
    layer.weight.data[...] = scale
    layer.bias.data[...] = bias
    layer.set_buffer("running_mean", np.asarray(mean, dtype=ld.dtype).copy())
    layer.set_buffer("running_var", np.asarray(var, dtype=ld.dtype).copy())
    return ld.emit(layer, [x], node.name or "batchnorm")


def _simple(cls):
    def f(ld, node, a):
        return ld.emit(cls(), [ld.act(node.input[0])], node.name or cls.__name__.lower())
    return f


def _leaky(ld, node, a):
    return ld.emit(LeakyReLU(a.get("alpha", 0.01)), [ld.act(node.input[0])],
                   node.name or "leakyrelu")


def _softmax(ld, node, a):
    x = ld.act(node.input[0])
    default = -1 if ld.opset is None or ld.opset >= 13 else 1
    axis = a.get("axis", default)
    if ld.opset is not None and ld.opset < 13:
        rank = None if x.shape is None else len(x.shape) + 1
        if rank is None or (axis % rank) != rank - 1:
            raise _Unsupported("opset < 13 Softmax over several axes (it flattens them)")
    return ld.emit(Softmax(axis), [x], node.name or "softmax")


def _pool(ld, node, a, kind):
    x = ld.act(node.input[0])
    if len(node.output) > 1 and any(node.output[1:]):
        raise _Unsupported("the Indices output")
    kernel = list(a["kernel_shape"])
    if len(kernel) != 2:
        raise _Unsupported(f"{len(kernel)}-D pooling (cnncore has 2-D)")
    strides = list(a.get("strides", [1, 1]))
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise _Unsupported("dilated pooling")
    pads = _resolve_pads(a, x, kernel, strides, [1, 1])
    begin, end = pads[:2], pads[2:]
    include_pad = bool(a.get("count_include_pad", 0))
    if a.get("ceil_mode", 0):
        if x.shape is None:
            raise _Unsupported("ceil_mode=1 needs the input's spatial size")
        for i, (size, k, s) in enumerate(zip(x.shape[1:], kernel, strides)):
            full = size + begin[i] + end[i] - k
            out = -(-full // s) + 1
            if (out - 1) * s >= size + begin[i]:  # the last window must start inside
                out -= 1
            extra = (out - 1) * s + k - (size + begin[i] + end[i])
            if extra > 0:
                if kind == "avg":
                    raise _Unsupported("ceil_mode=1 with windows past the end")
                end[i] += extra
    explicit = begin != end or any(2 * p > k for p, k in zip(begin + end, kernel * 2))
    if explicit:
        if kind == "avg" and not include_pad:
            raise _Unsupported("uneven padding with count_include_pad=0")
        fill = -np.inf if kind == "max" else 0.0
        x = ld.emit(_pad_layer(fill, begin, end, 2), [x], node.name + "_pad")
        begin = [0, 0]
    if kind == "max":
        layer = MaxPool2d(kernel, strides, begin)
    else:
        layer = AvgPool2d(kernel, strides, begin, count_include_pad=include_pad)
    return ld.emit(layer, [x], node.name or f"{kind}pool")


def _global_avg(ld, node, a):
    x = ld.act(node.input[0])
    if x.shape is not None and len(x.shape) != 3:
        raise _Unsupported("GlobalAveragePool of a non-4-D input")
    return ld.emit(AdaptiveAvgPool2d(1), [x], node.name or "globalavgpool")


def _flatten(ld, node, a):
    x = ld.act(node.input[0])
    axis = a.get("axis", 1)
    rank = None if x.shape is None else len(x.shape) + 1
    if axis != 1 and not (rank is not None and axis % rank == 1):
        raise _Unsupported(f"axis={axis} (cnncore flattens everything after the batch axis)")
    return ld.emit(Flatten(), [x], node.name or "flatten")


def _reshape(ld, node, a):
    x = ld.act(node.input[0])
    target = list(np.asarray(ld.const(node.input[1], "the target shape"),
                             dtype=object).reshape(-1))
    if x.shape is None:
        raise _Unsupported("Reshape of a tensor whose shape is unknown at load time")
    rest = int(np.prod(x.shape, dtype=np.int64))

    def is_int(v, *values):
        return not isinstance(v, _Batch) and int(v) in values

    batch_values = (0, -1) if ld.batch is None else (0, -1, ld.batch)
    ok = (len(target) == 2 and (target[0] is BATCH or is_int(target[0], *batch_values))
          and is_int(target[1], -1, rest)
          and not (is_int(target[0], -1) and is_int(target[1], -1)))
    if not ok:
        raise _Unsupported(f"target shape {[str(t) for t in target]} of an (N, "
                           f"{', '.join(map(str, x.shape))}) input (only flattening to "
                           "(N, -1) is supported)")
    if len(x.shape) == 1:
        return x
    return ld.emit(Flatten(), [x], node.name or "reshape")


def _identity(ld, node, a):
    return ld.act(node.input[0])


def _dropout(ld, node, a):
    if len(node.output) > 1 and node.output[1] and ld.consumers.get(node.output[1]):
        raise _Unsupported("the mask output")
    x = ld.act(node.input[0])
    p = a.get("ratio", 0.5)
    if len(node.input) > 1 and node.input[1]:
        p = float(ld.const(node.input[1], "the ratio"))
    if len(node.input) > 2 and node.input[2] and bool(ld.const(node.input[2])):
        raise _Unsupported("training_mode=True")
    return ld.emit(Dropout(float(p)), [x], node.name or "dropout")


def _lrn(ld, node, a):
    size = int(a["size"])
    if size % 2 == 0:
        raise _Unsupported("an even size (its window differs from cnncore's)")
    return ld.emit(LocalResponseNorm(size, a.get("alpha", 1e-4), a.get("beta", 0.75),
                                     a.get("bias", 1.0)),
                   [ld.act(node.input[0])], node.name or "lrn")


def _fold_bias(ld, src, c):
    """Fold the constant ``c`` into the bias of the Linear / Conv that produced the ONNX
    tensor ``src`` (if nothing else reads it); returns the tensor or None."""
    act = ld.acts[src]
    if act.node is None or ld.onnx_names.get(act.name) != [src] or ld.consumers.get(src) != 1:
        return None
    layer = ld.nodes[act.node][1]
    if not isinstance(layer, (Linear, Conv2d, Conv1d)):
        return None
    n = layer.weight.shape[0]
    c = np.asarray(c)
    if isinstance(layer, Linear):
        ok = c.size == n and c.shape in ((n,), (1, n))
    else:
        extra = len(layer.kernel_size)
        ok = c.size == n and c.shape in ((n,) + (1,) * extra, (1, n) + (1,) * extra)
    if not ok:
        return None
    if layer.bias is None:
        layer.add_parameter("bias", np.zeros(n, dtype=layer.weight.data.dtype))
        layer.bias_init = "zeros"
    layer.bias.data += c.reshape(-1).astype(layer.bias.data.dtype)
    return act


def _add(ld, node, a):
    names = [i for i in node.input]
    consts = [n for n in names if n in ld.consts]
    if node.op_type == "Add" and len(names) == 2 and len(consts) == 1:
        src = names[0] if names[1] in ld.consts else names[1]
        ld.act(src)
        folded = _fold_bias(ld, src, ld.consts[consts[0]])
        if folded is not None:
            return folded
        raise _Unsupported("adding a constant other than a Gemm / MatMul / Conv bias")
    if consts:
        raise _Unsupported("adding a constant to several activations")
    acts = [ld.act(n) for n in names]
    if len(acts) == 1:
        return acts[0]
    shapes = [t.shape for t in acts]
    if all(s is not None for s in shapes) and any(s != shapes[0] for s in shapes):
        raise _Unsupported(f"broadcasting shapes {shapes} (cnncore adds equal shapes)")
    return ld.emit(Add(), acts, node.name or "add")


def _concat(ld, node, a):
    acts = [ld.act(n) for n in node.input]
    axis = a["axis"]
    rank = None if acts[0].shape is None else len(acts[0].shape) + 1
    if rank is not None:
        axis %= rank
    if axis == 0:
        raise _Unsupported("concatenation along the batch axis")
    if len(acts) == 1:
        return acts[0]
    return ld.emit(Concatenate(axis), acts, node.name or "concat")


def _pad(ld, node, a):
    x = ld.act(node.input[0])
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise _Unsupported(f"mode={mode!r}")
    pads = list(a["pads"]) if "pads" in a else [int(v) for v in ld.const(node.input[1], "pads")]
    value = 0.0
    if "value" in a:
        value = float(a["value"])
    elif len(node.input) > 2 and node.input[2]:
        value = float(ld.const(node.input[2], "the constant value"))
    if len(node.input) > 3 and node.input[3]:
        raise _Unsupported("the axes input")
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        raise _Unsupported(f"pads {pads} (cnncore pads H and W of 4-D inputs, by >= 0)")
    return ld.emit(ConstantPad2d((pads[3], pads[7], pads[2], pads[6]), value), [x],
                   node.name or "pad")


#: ONNX operator -> importer (returns the output _Tensor).
IMPORTERS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "BatchNormalization": _batchnorm,
    "Relu": _simple(ReLU), "Sigmoid": _simple(Sigmoid), "Tanh": _simple(Tanh),
    "LeakyRelu": _leaky, "Softmax": _softmax,
    "MaxPool": lambda ld, n, a: _pool(ld, n, a, "max"),
    "AveragePool": lambda ld, n, a: _pool(ld, n, a, "avg"),
    "GlobalAveragePool": _global_avg, "Flatten": _flatten, "Reshape": _reshape,
    "Identity": _identity, "Dropout": _dropout, "LRN": _lrn,
    "Add": _add, "Sum": _add, "Concat": _concat, "Pad": _pad,
}


# ------------------------------------------------------------------------- driver
def _read(onnx, source):
    if isinstance(source, onnx.ModelProto):
        return source, "model"
    if isinstance(source, (bytes, bytearray)):
        return onnx.load_from_string(bytes(source)), "model"
    name = os.fspath(source)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such file")
    try:
        return onnx.load(name), name
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{name}: not a readable ONNX file ({type(e).__name__}: {e})") from e


def _dtype(onnx, elem, where):
    table = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
    if elem not in table:
        raise ValueError(f"cnncore.onnx.load({where}): input type "
                         f"{onnx.TensorProto.DataType.Name(elem)}; cnncore runs float32 and "
                         "float64 models")
    return np.dtype(table[elem])


def load(source):
    """Read an ONNX model (a path, bytes or an ``onnx.ModelProto``) into a cnncore model.

    Returns
    -------
    Sequential or Graph
        A :class:`~cnncore.layers.Sequential` when the graph is a chain with one output,
        otherwise a :class:`~cnncore.layers.Graph` (one output: an ordinary layer; several:
        ``forward`` returns a tuple in the ONNX graph's output order). In eval mode, with
        ``input_shape`` set when the file gives the input's non-batch sizes.

    Raises
    ------
    UnsupportedOperators (a ValueError)
        Listing every operator (type, node name and position) that cannot be converted and
        why.
    ValueError
        For graphs with several inputs or a non-float input.
    """
    onnx = require_onnx("cnncore.onnx.load")
    proto, where = _read(onnx, source)
    ld = _Loader(onnx, proto, where)
    g = proto.graph
    for init in g.initializer:
        ld.consts[init.name] = onnx.numpy_helper.to_array(init)
    inputs = [i for i in g.input if i.name not in ld.consts]
    if len(inputs) != 1:
        raise ValueError(f"cnncore.onnx.load({where}): the graph has {len(inputs)} inputs "
                         f"({', '.join(i.name for i in inputs)}); a cnncore model has one")
    inp = inputs[0]
    tt = inp.type.tensor_type
    ld.dtype = _dtype(onnx, tt.elem_type, where)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    shape = tuple(dims[1:]) if dims and all(d is not None for d in dims[1:]) else None
    ld.batch = dims[0] if dims else None
    input_name = ld.node_name(inp.name or "input")
    ld.acts[inp.name] = _Tensor(input_name, None, shape)

    for index, node in enumerate(g.node):
        a = ld.attrs(node)
        try:
            if node.domain not in ("", "ai.onnx"):
                raise _Unsupported(f"domain {node.domain!r}")
            present = [i for i in node.input if i]
            if all(i in ld.consts for i in present) and not node.op_type == "Dropout":
                value = _fold(ld, node, a)
                for name, v in zip(node.output, value):
                    ld.consts[name] = v
                continue
            if node.op_type == "Shape" and present[0] in ld.acts:
                ld.consts[node.output[0]] = _shape(ld, node, a)
                continue
            if any(i in ld.failed for i in present):
                ld.failed.update(node.output)  # reported at its cause, unless unknown too
                if node.op_type not in IMPORTERS and node.op_type not in CONSTANT_OPS:
                    raise _Unsupported("no cnncore layer for this operator")
                continue
            missing = [i for i in present if i not in ld.consts and i not in ld.acts]
            if missing:
                raise _Unsupported(f"reads {missing}, which no earlier node makes")
            fn = IMPORTERS.get(node.op_type)
            if fn is None:
                raise _Unsupported("no cnncore layer for this operator")
            out = fn(ld, node, a)
            ld.acts[node.output[0]] = out
            ld.onnx_names.setdefault(out.name, []).append(node.output[0])
        except _Unsupported as e:
            ld.failed.update(node.output)
            ld.problems.append((node.op_type, node.name or "(unnamed)", index, str(e)))
        except (KeyError, IndexError, TypeError) as e:
            ld.failed.update(node.output)
            ld.problems.append((node.op_type, node.name or "(unnamed)", index,
                                f"malformed node ({type(e).__name__}: {e})"))
    if ld.problems:
        kinds = sorted({p[0] for p in ld.problems})
        lines = "\n".join(f"  - {op} (node {name!r}, #{i}): {why}"
                          for op, name, i, why in ld.problems)
        raise UnsupportedOperators(
            f"cnncore.onnx.load({where}): {len(ld.problems)} node(s) cannot be converted "
            f"(operators: {', '.join(kinds)}):\n{lines}\nSupported operators: "
            f"{', '.join(sorted(IMPORTERS))} (and constant shape arithmetic: "
            f"{', '.join(sorted(CONSTANT_OPS))})", ld.problems)
    outs = []
    for o in g.output:
        if o.name in ld.consts:
            raise ValueError(f"cnncore.onnx.load({where}): output {o.name!r} is a constant")
        t = ld.acts[o.name]
        if t.node is None:  # the input itself
            t = ld.emit(Identity(), [t], o.name or "output")
        outs.append(t.name)
    model = _build(ld, input_name, outs)
    if shape is not None:
        model.input_shape = shape
    return model.eval()


def _build(ld, input_name, outs):
    # Drop what no output needs.
    producer = {n[3]: n for n in ld.nodes}
    needed, stack = set(), list(outs)
    while stack:
        t = stack.pop()
        if t in needed or t == input_name:
            continue
        needed.add(t)
        stack.extend(producer[t][2])
    nodes = [n for n in ld.nodes if n[3] in needed]
    chain = len(outs) == 1 and nodes and nodes[-1][3] == outs[0] and all(
        not getattr(layer, "multi_input", False) and ins == [prev]
        for (_, layer, ins, _), prev in zip(nodes, [input_name] + [n[3] for n in nodes]))
    if chain:
        return Sequential(*[n[1] for n in nodes])
    graph = Graph(input=input_name)
    for name, layer, ins, _ in nodes:
        graph.add(layer, ins, name=name)
    graph.output(*outs)
    return graph


"""A directed-acyclic-graph container, :class:`Graph`, and its merge layers :class:`Add` and
:class:`Concatenate`.

:class:`Sequential`, :class:`Residual` and :class:`Concat` build trees; a :class:`Graph`
wires named nodes freely (Keras' functional API with explicit names): every node is a
layer applied to the outputs of earlier nodes (or to the graph's input)::

    from cnncore.layers import Add, Concatenate, Conv2d, Flatten, GlobalAvgPool2d, Graph, Linear, ReLU

    g = Graph()                                              # one input, named "input"
    g.add(Conv2d(3, 8, 3, padding=1), "input", name="stem")
    g.add(ReLU(), "stem", name="act")                        # "act" fans out to three nodes
    g.add(Conv2d(8, 8, 3, padding=1), "act", name="branch")
    g.add(Add(), ["act", "branch"], name="sum")              # a residual connection
    g.add(Concatenate(axis=1), ["act", "sum"], name="cat")   # 16 channels
    g.add(GlobalAvgPool2d(), "cat", name="pool")
    g.add(Linear(16, 10), "pool", name="fc")
    g.output("fc")                                           # optional: the last node
    y = g.forward(x)                                         # x: (N, 3, H, W) float32

Nodes run in the order they were added, which is a topological order: a node's inputs must
exist when it is added, so a graph cannot have a cycle. ``backward`` runs them in reverse and
sums the gradients of a tensor that several nodes consume.

* One input (the Trainer feeds one array); any number of consumers.
* Several outputs (``g.output("a", "b")``): ``forward`` returns a tuple, ``backward`` takes
  a tuple (``None`` for an output without gradient); ``predict`` and the Trainer need one
  output. With one output (the default) the graph is an ordinary layer: it trains, nests
  in a Sequential, saves, loads and exports to ONNX (:func:`cnncore.onnx.export`).
* A node that no output depends on is refused (the error names it): its parameters would
  never be trained. Remove it or make it an output.
* A layer instance is one node: a layer caches its input in ``forward``, so sharing one
  between two nodes would break ``backward``.

Merge layers (:class:`Add`, :class:`Concatenate`) take a list of inputs; every other layer
takes one. Parameter names are ``<node name>.<parameter>`` (``stem.weight``).
"""

import numpy as np

from .base import Layer, layer_from_config, shape_str

__all__ = ["Graph", "Add", "Concatenate"]


def _shape_text(shape):
    if shape and isinstance(shape[0], (tuple, list)):
        return "[" + ", ".join(shape_str(tuple(s)) for s in shape) + "]"
    return shape_str(tuple(shape))


class _Merge(Layer):
    """Base of layers with several inputs: ``forward([x1, x2, ...])``, ``backward(g) ->
    [g1, g2, ...]``, ``output_shape([s1, s2, ...])``."""

    multi_input = True

    def _inputs(self, xs):
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError(f"{self!r}: expects a list of at least two inputs (a merge layer "
                             f"is a Graph node), got "
                             f"{type(xs).__name__ if not isinstance(xs, (list, tuple)) else len(xs)}")
        return list(xs)


class Add(_Merge):
    """Element-wise sum of two or more inputs of the same shape (a residual connection in a
    :class:`Graph`)."""

    def __init__(self):
        super().__init__()
        self._n = None

    def _mismatch(self, shapes):
        return ValueError(f"{self!r}: inputs {', '.join(shape_str(tuple(s)) for s in shapes)} "
                          "differ; Add needs equal shapes (no broadcasting)")

    def forward(self, xs):
        xs = self._inputs(xs)
        if any(x.shape != xs[0].shape for x in xs):
            raise self._mismatch([x.shape for x in xs])
        y = xs[0] + xs[1]
        for x in xs[2:]:
            np.add(y, x, out=y)
        self._n = len(xs)
        return y

    def backward(self, grad_out):
        if self._n is None:
            raise self._backward_before_forward()
        return [grad_out] * self._n

    def output_shape(self, input_shapes):
        shapes = [tuple(s) for s in self._inputs(input_shapes)]
        if any(s != shapes[0] for s in shapes):
            raise self._mismatch(shapes)
        return shapes[0]


class Concatenate(_Merge):
    """Concatenation of two or more inputs along ``axis`` (default 1, the channels)."""

    def __init__(self, axis=1):
        super().__init__()
        if axis == 0:
            raise ValueError("Concatenate: axis 0 is the batch axis")
        self.axis = int(axis)
        self._sizes = None

    def _mismatch(self, shapes):
        return ValueError(f"{self!r}: inputs {', '.join(shape_str(tuple(s)) for s in shapes)} "
                          f"differ outside axis {self.axis}")

    def forward(self, xs):
        xs = self._inputs(xs)
        ax = self.axis % xs[0].ndim
        ref = xs[0].shape[:ax] + xs[0].shape[ax + 1:]
        if any(x.ndim != xs[0].ndim or x.shape[:ax] + x.shape[ax + 1:] != ref for x in xs):
            raise self._mismatch([x.shape for x in xs])
        self._sizes = [x.shape[ax] for x in xs]
        return np.concatenate(xs, axis=ax)

    def backward(self, grad_out):
        if self._sizes is None:
            raise self._backward_before_forward()
        ax = self.axis % grad_out.ndim
        parts = np.split(grad_out, np.cumsum(self._sizes)[:-1], axis=ax)
        return [np.ascontiguousarray(p) for p in parts]

    def output_shape(self, input_shapes):
        shapes = [tuple(s) for s in self._inputs(input_shapes)]
        # Shapes have no batch axis: a positive axis moves down by one.
        ax = (self.axis - 1 if self.axis > 0 else self.axis) % len(shapes[0])
        ref = shapes[0][:ax] + shapes[0][ax + 1:]
        if any(len(s) != len(shapes[0]) or s[:ax] + s[ax + 1:] != ref for s in shapes):
            raise self._mismatch(shapes)
        return shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1:]

    def get_config(self):
        return {"axis": self.axis}

    def extra_repr(self):
        return "" if self.axis == 1 else f"axis={self.axis}"


def _is_merge(layer):
    return bool(getattr(layer, "multi_input", False))


class Graph(Layer):
    """A directed acyclic graph of named layers with one input; see the module docstring
    for an example.

    Parameters
    ----------
    input : str
        Name of the graph's input tensor (default ``"input"``), used as a node input.

    Build with :meth:`add` and, optionally, :meth:`output`; ``graph[name]`` is a node's layer,
    ``graph.nodes`` the ``(name, layer, inputs)`` triples in execution order.
    """

    def __init__(self, input="input"):
        super().__init__()
        self._check_name(input, "input name")
        self.input_name = input
        self._nodes = []          # [(name, layer, (input names...)), ...] in insertion order
        self._outputs = None      # None: the last node
        self._plan = None
        self._input_meta = None   # (shape, dtype) of the last forward's input
        self._out_meta = {}       # node name -> (shape, dtype) of its last output

    # ------------------------------------------------------------------ building
    def _check_name(self, name, what):
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"Graph: {what} must be a non-empty string without dots, "
                             f"got {name!r}")

    def _default_name(self, layer):
        base = type(layer).__name__.lower()
        taken = set(self._children) | {self.input_name}
        if base not in taken:
            return base
        k = 1
        while f"{base}_{k}" in taken:
            k += 1
        return f"{base}_{k}"

    def add(self, layer, inputs=None, name=None):
        """Add the node ``name`` computing ``layer(inputs)``; returns its name.

        Parameters
        ----------
        layer : Layer
            A merge layer (:class:`Add`, :class:`Concatenate`) takes a list of inputs, any
            other layer exactly one.
        inputs : str or list of str, optional
            Names of earlier nodes or of the graph's input; default the last node added
            (the graph's input for the first node).
        name : str, optional
            Unique, without dots; default the layer's class name in lower case (``conv2d``,
            ``conv2d_1``, ...).
        """
        if not isinstance(layer, Layer):
            raise TypeError(f"Graph.add: layer must be a Layer, got {type(layer).__name__}")
        if any(layer is n[1] for n in self._nodes):
            raise ValueError(f"Graph.add: {layer!r} is already a node of this graph; a layer "
                             "caches its input, so each node needs its own instance")
        name = self._default_name(layer) if name is None else name
        self._check_name(name, "node name")
        if name == self.input_name or name in self._children:
            raise ValueError(f"Graph.add: name {name!r} is already used")
        if inputs is None:
            inputs = self._nodes[-1][0] if self._nodes else self.input_name
        if isinstance(inputs, str):
            inputs = [inputs]
        inputs = tuple(inputs)
        known = {self.input_name} | set(self._children)
        unknown = [i for i in inputs if i not in known]
        if unknown:
            raise ValueError(f"Graph.add({name!r}): unknown input(s) {unknown}; inputs must be "
                             f"the graph's input {self.input_name!r} or earlier nodes "
                             f"({', '.join(self._children) or 'none yet'})")
        if _is_merge(layer):
            if len(inputs) < 2:
                raise ValueError(f"Graph.add({name!r}): {type(layer).__name__} merges two or "
                                 f"more inputs, got {list(inputs)}")
        elif len(inputs) != 1:
            raise ValueError(f"Graph.add({name!r}): {type(layer).__name__} takes one input, got "
                             f"{list(inputs)} (merge them first with Add or Concatenate)")
        self.add_child(name, layer)
        self._nodes.append((name, layer, inputs))
        self._plan = None
        return name

    def output(self, *names):
        """Make ``names`` (node names, in order) the graph's outputs; returns self. Without a
        call the last node added is the output."""
        if len(names) == 1 and isinstance(names[0], (list, tuple)):
            names = tuple(names[0])
        if not names:
            raise ValueError("Graph.output: give at least one node name")
        unknown = [n for n in names if n not in self._children]
        if unknown:
            raise ValueError(f"Graph.output: {unknown} are not nodes (nodes: "
                             f"{', '.join(self._children) or 'none'})")
        if len(set(names)) != len(names):
            raise ValueError(f"Graph.output: repeated names in {list(names)}")
        self._outputs = tuple(names)
        self._plan = None
        return self

    @property
    def outputs(self):
        """Names of the output nodes."""
        if self._outputs is not None:
            return self._outputs
        return (self._nodes[-1][0],) if self._nodes else ()

    @property
    def nodes(self):
        """``[(name, layer, input names), ...]`` in execution order."""
        return list(self._nodes)

    def __getitem__(self, name):
        try:
            return self._children[name]
        except KeyError:
            raise KeyError(f"Graph: no node named {name!r} (nodes: "
                           f"{', '.join(self._children)})") from None

    def __len__(self):
        return len(self._nodes)

    def _compile(self):
        """Check the graph and precompute, for each tensor, how many nodes read it."""
        if self._plan is not None:
            return self._plan
        if not self._nodes:
            raise ValueError("Graph: no nodes; add some with Graph.add")
        outputs = self.outputs
        needed, stack = set(), list(outputs)
        producers = {name: inputs for name, _, inputs in self._nodes}
        while stack:
            n = stack.pop()
            if n in needed or n == self.input_name:
                continue
            needed.add(n)
            stack.extend(producers[n])
        unused = [name for name, _, _ in self._nodes if name not in needed]
        if unused:
            raise ValueError(f"Graph: node(s) {unused} do not lead to any output "
                             f"({', '.join(outputs)}); remove them or list them in "
                             "Graph.output(...)")
        uses = {}
        for _, _, inputs in self._nodes:
            for i in inputs:
                uses[i] = uses.get(i, 0) + 1
        if self.input_name not in uses:
            raise ValueError(f"Graph: no node reads the input {self.input_name!r}")
        self._plan = uses
        return uses

    # ------------------------------------------------------------------ computation
    def forward(self, x):
        uses = dict(self._compile())
        outputs = self.outputs
        keep = set(outputs)
        values = {self.input_name: x}
        self._input_meta = (x.shape, x.dtype)
        self._out_meta = {}
        for name, layer, inputs in self._nodes:
            args = [values[i] for i in inputs]
            y = layer.forward(args) if _is_merge(layer) else layer.forward(args[0])
            for i in inputs:  # free what no later node reads
                uses[i] -= 1
                if uses[i] == 0 and i not in keep:
                    values.pop(i, None)
            values[name] = y
            self._out_meta[name] = (y.shape, y.dtype)
        out = tuple(values[o] for o in outputs)
        return out[0] if len(out) == 1 else out

    def _backward(self, grad_out, need_input_grad):
        if self._input_meta is None:
            raise self._backward_before_forward()
        outputs = self.outputs
        if len(outputs) == 1:
            grad_out = (grad_out,)
        elif not isinstance(grad_out, (list, tuple)) or len(grad_out) != len(outputs):
            raise ValueError(f"Graph.backward: the graph has {len(outputs)} outputs "
                             f"({', '.join(outputs)}); give a tuple of as many gradients "
                             "(None for an output without gradient)")
        grads, owned = {}, set()

        def accumulate(name, g):
            if name not in grads:
                grads[name] = g
            elif name in owned:
                np.add(grads[name], g, out=grads[name])
            else:  # never write into an array a layer returned
                grads[name] = grads[name] + g
                owned.add(name)

        for name, g in zip(outputs, grad_out):
            if g is not None:
                accumulate(name, g)
        for name, layer, inputs in reversed(self._nodes):
            g = grads.pop(name, None)
            if g is None:  # nothing downstream has a gradient: no parameter gradient either
                continue
            if not need_input_grad and not _is_merge(layer) and inputs == (self.input_name,):
                layer.backward_params(g)
                continue
            gi = layer.backward(g)
            for i, gx in zip(inputs, gi if _is_merge(layer) else [gi]):
                if i == self.input_name and not need_input_grad:
                    continue
                accumulate(i, gx)
        if not need_input_grad:
            return None
        g = grads.get(self.input_name)
        if g is None:
            shape, dtype = self._input_meta
            g = np.zeros(shape, dtype)
        return g

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def backward_params(self, grad_out):
        self._backward(grad_out, False)

    def _shapes(self, input_shape):
        """{tensor name: shape} for an input of shape ``input_shape`` (no batch axis)."""
        self._compile()
        shapes = {self.input_name: tuple(input_shape)}
        for name, layer, inputs in self._nodes:
            if _is_merge(layer):
                shapes[name] = tuple(layer.output_shape([shapes[i] for i in inputs]))
            else:
                shapes[name] = tuple(layer.output_shape(shapes[inputs[0]]))
        return shapes

    def output_shape(self, input_shape):
        shapes = self._shapes(input_shape)
        out = tuple(shapes[o] for o in self.outputs)
        return out[0] if len(out) == 1 else out

    def summary_children(self, input_shape):
        """``[(name, layer, its input shape(s)), ...]`` for :func:`cnncore.model.summary`."""
        shapes = self._shapes(input_shape)
        return [(name, layer, [shapes[i] for i in inputs] if _is_merge(layer)
                 else shapes[inputs[0]]) for name, layer, inputs in self._nodes]

    # ------------------------------------------------------------------ config & display
    def get_config(self):
        return {"input": self.input_name,
                "nodes": [[name, list(inputs)] for name, _, inputs in self._nodes],
                "outputs": list(self.outputs)}

    @classmethod
    def from_config(cls, config):
        cfg = config.get("config", {})
        children = [layer_from_config(c) for c in config.get("children", [])]
        nodes = cfg.get("nodes", [])
        if len(children) != len(nodes):
            raise ValueError(f"Graph: {len(nodes)} nodes but {len(children)} layers in the "
                             "config")
        graph = cls(input=cfg.get("input", "input"))
        for (name, inputs), layer in zip(nodes, children):
            graph.add(layer, list(inputs), name=name)
        if cfg.get("outputs"):
            graph.output(*cfg["outputs"])
        return graph

    def __repr__(self):
        lines = []
        for name, layer, inputs in self._nodes:
            text = repr(layer).replace("\n", "\n  ")
            lines.append(f"({name}): {text} <- {', '.join(inputs)}")
        head = f"Graph(input={self.input_name!r}, outputs={list(self.outputs)}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

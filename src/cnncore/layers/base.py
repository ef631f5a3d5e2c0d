"""Building blocks shared by every layer: :class:`Parameter` and :class:`Layer`.

A layer owns its parameters (trainable arrays with a gradient), its buffers (arrays that
are saved but not trained, e.g. BatchNorm running statistics) and its children (for
containers). ``forward`` caches what ``backward`` needs; ``backward`` *adds* the parameter
gradients into ``Parameter.grad`` (call ``zero_grad()`` between steps, as the Trainer does)
and returns the gradient with respect to the input.
"""

import itertools

import numpy as np

__all__ = ["Parameter", "Layer", "layer_from_config", "register_layer"]

_REGISTRY = {}
_VERSIONS = itertools.count(1)  # Parameter versions: unique across all parameters

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def register_layer(cls):
    """Make ``cls`` known to :func:`layer_from_config` (done automatically for subclasses
    of :class:`Layer`; a user layer with the same name as a built-in one replaces it)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def layer_from_config(config):
    """Rebuild a layer (or a whole model) from the dict returned by ``get_config()``-based
    :meth:`Layer.to_config`: ``{"class": name, "config": {...}, "children": [...]}``."""
    if not isinstance(config, dict) or "class" not in config:
        raise ValueError(f"layer config must be a dict with a 'class' key, got {config!r}")
    name = config["class"]
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown layer class {name!r} (known: {', '.join(sorted(_REGISTRY))}); "
                         "a custom layer must be imported before loading a model that uses it "
                         "(cnncore.load imports the model zoo's)")
    layer = cls.from_config(config)
    if config.get("input_shape") is not None:
        layer.input_shape = tuple(int(s) for s in config["input_shape"])
    return layer


_MODEL_FUNCTIONS = {}


def register_model_function(name, fn):
    """Make ``fn`` serve ``Layer.<name>`` (``'summary'``, ``'save'``, ``'predict'``): the
    modules above the layers (:mod:`cnncore.model`, :mod:`cnncore.serialization`) register
    their functions on import, so that this module imports nothing from them."""
    _MODEL_FUNCTIONS[name] = fn


def _model_function(name):
    fn = _MODEL_FUNCTIONS.get(name)
    if fn is None:  # only when cnncore.layers was imported without the cnncore package
        raise RuntimeError(f"Layer.{name}() needs cnncore.model and cnncore.serialization: "
                           "import cnncore first")
    return fn


def check_float_dtype(dtype, where):
    dtype = np.dtype(dtype)
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype}")
    return dtype


class Parameter:
    """A trainable array and its gradient.

    Attributes
    ----------
    data : ndarray
        The value, updated in place by the optimisers.
    grad : ndarray
        Same shape and dtype as ``data``; layers add their gradient into it.
    name : str
        The name inside its layer (``"weight"``, ``"bias"``, ...).
    version : int
        Changes whenever ``data`` may have changed (see :meth:`mark_changed`).
    """

    __slots__ = ("_data", "grad", "name", "_version")

    def __init__(self, data, name):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)
        self.name = name

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        # also reached by in-place operators on the attribute: ``p.data -= lr * g``
        self._data = value
        self._version = next(_VERSIONS)

    @property
    def version(self):
        """A number that changes whenever ``data`` may have changed, unique across all
        parameters: on assignment to ``data`` (``p.data = a``, ``p.data -= d``), an
        optimiser step, ``load_state_dict``, ``reset_parameters``, ``astype`` and
        :meth:`mark_changed`. Layers key what they derive from ``data`` on it (Conv2d keeps
        its Winograd weight transforms in eval mode while it is unchanged)."""
        return self._version

    def mark_changed(self):
        """Call after writing into ``data`` through a view (``p.data[...] = a``,
        ``np.copyto(p.data, a)``, ``p.data[0] *= 2``), which ``version`` cannot see, so
        that layers drop what they derived from the old values (a layer's ``eval()`` or
        ``train()`` drops it too)."""
        self._version = next(_VERSIONS)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def zero_grad(self):
        """Set the gradient to zero (in place)."""
        self.grad.fill(0)

    def astype(self, dtype):
        """Convert value and gradient to ``dtype`` (in place on this object)."""
        dtype = np.dtype(dtype)
        if self.data.dtype != dtype:
            self.data = self.data.astype(dtype)
            self.grad = np.zeros_like(self.data)
        return self

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class Layer:
    """Base class of every layer and container.

    Subclasses implement ``forward``, ``backward`` and, when they change the shape,
    ``output_shape``; layers with parameters implement ``reset_parameters(rng)``; layers with
    constructor arguments implement ``get_config()`` (the keyword arguments that rebuild them)
    and ``extra_repr()``.
    """

    def __init__(self):
        self.training = True
        self._params = {}
        self._buffers = {}
        self._children = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_layer(cls)

    # ------------------------------------------------------------------ registration
    def add_parameter(self, name, data):
        """Register a new :class:`Parameter` and make it available as ``self.<name>``."""
        p = Parameter(data, name)
        self._params[name] = p
        setattr(self, name, p)
        return p

    def add_buffer(self, name, data):
        """Register a non-trainable array saved with the model (``self.<name>``)."""
        self._buffers[name] = np.ascontiguousarray(data)
        setattr(self, name, self._buffers[name])

    def set_buffer(self, name, data):
        """Replace a buffer's value, keeping attribute and registry in sync."""
        self._buffers[name] = data
        setattr(self, name, data)

    def add_child(self, name, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"{type(self).__name__}: child {name!r} must be a Layer, "
                            f"got {type(layer).__name__}")
        self._children[name] = layer
        return layer

    # ------------------------------------------------------------------ computation
    def forward(self, x):
        """Compute the output for a batch ``x`` and cache what ``backward`` needs."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_out):
        """Given dL/d(output) of the last ``forward``, add dL/d(parameters) into the
        parameters' ``grad`` and return dL/d(input)."""
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def backward_params(self, grad_out):
        """As :meth:`backward`, for a layer whose input needs no gradient (the first layer
        of the model being trained): add dL/d(parameters) and return None. Layers that can
        skip the input gradient (convolutions) do; the default calls :meth:`backward`."""
        self.backward(grad_out)

    def __call__(self, x):
        return self.forward(x)

    def output_shape(self, input_shape):
        """Output shape (without the batch axis) for an input of shape ``input_shape``
        (without the batch axis). The default: shape unchanged."""
        return tuple(input_shape)

    # ------------------------------------------------------------------ traversal
    def children(self):
        return list(self._children.values())

    def named_children(self):
        return list(self._children.items())

    def named_parameters(self, prefix=""):
        """``[(dotted name, Parameter), ...]`` of this layer and its children, in order."""
        out = [(prefix + name, p) for name, p in self._params.items()]
        for cname, child in self._children.items():
            out.extend(child.named_parameters(f"{prefix}{cname}."))
        return out

    def parameters(self):
        """Every :class:`Parameter` of the layer and its children (each once), in order."""
        seen, out = set(), []
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def named_buffers(self, prefix=""):
        out = [(prefix + name, b) for name, b in self._buffers.items()]
        for cname, child in self._children.items():
            out.extend(child.named_buffers(f"{prefix}{cname}."))
        return out

    def named_layers(self, prefix=""):
        """``[(dotted name, layer), ...]`` of this layer (name ``prefix`` without the final
        dot, ``""`` for the root) and every descendant, depth first."""
        out = [(prefix[:-1] if prefix else "", self)]
        for cname, child in self._children.items():
            out.extend(child.named_layers(f"{prefix}{cname}."))
        return out

    def num_parameters(self):
        """Total number of trainable scalars."""
        return int(sum(p.size for p in self.parameters()))

    # ------------------------------------------------------------------ modes & state
    def train(self, mode=True):
        """Training mode (Dropout active, BatchNorm uses batch statistics); returns self."""
        self.training = bool(mode)
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self):
        """Inference mode; returns self."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    @property
    def dtype(self):
        """dtype of the parameters (None for a layer without parameters)."""
        for _, p in self.named_parameters():
            return p.data.dtype
        for _, b in self.named_buffers():
            if b.dtype.kind == "f":
                return b.dtype
        return None

    def astype(self, dtype):
        """Convert every parameter and floating buffer to ``dtype`` in place; returns self.
        Create the optimiser after this call."""
        dtype = check_float_dtype(dtype, type(self).__name__ + ".astype")
        for _, layer in self.named_layers():
            for p in layer._params.values():
                p.astype(dtype)
            for name, b in list(layer._buffers.items()):
                if b.dtype.kind == "f":
                    layer.set_buffer(name, b.astype(dtype))
            if hasattr(layer, "_dtype"):
                layer._dtype = dtype
        return self

    def reset_parameters(self, rng=None):
        """Re-initialise the parameters of this layer and its children with ``rng``
        (a Generator, a seed or None)."""
        rng = as_generator(rng)
        for child in self._children.values():
            child.reset_parameters(rng)

    def initialize(self, seed):
        """Deterministic initialisation of the whole model: the same seed gives the same
        weights (and the same Dropout generators). Returns self."""
        self.reset_parameters(np.random.default_rng(seed))
        return self

    def state_dict(self):
        """``{dotted name: array copy}`` of every parameter and buffer."""
        out = {name: p.data.copy() for name, p in self.named_parameters()}
        out.update({name: b.copy() for name, b in self.named_buffers()})
        return out

    def load_state_dict(self, state, where="load_state_dict"):
        """Copy arrays from ``state`` (as returned by :meth:`state_dict`) into the model.
        Every parameter and buffer must be present with the same shape."""
        targets = dict(self.named_parameters())
        buffers = {}
        for prefix_name, layer in self.named_layers():
            pre = prefix_name + "." if prefix_name else ""
            for bname in layer._buffers:
                buffers[pre + bname] = (layer, bname)
        missing = [k for k in list(targets) + list(buffers) if k not in state]
        unexpected = [k for k in state if k not in targets and k not in buffers]
        if missing or unexpected:
            raise ValueError(f"{where}: state does not match the model "
                             f"(missing: {missing or 'none'}, unexpected: {unexpected or 'none'})")
        for name, p in targets.items():
            arr = np.asarray(state[name])
            if arr.shape != p.data.shape:
                raise ValueError(f"{where}: parameter {name!r} has shape {arr.shape}, "
                                 f"the model expects {p.data.shape}")
            p.data[...] = arr
            p.mark_changed()
        for name, (layer, bname) in buffers.items():
            arr = np.asarray(state[name])
            old = layer._buffers[bname]
            if arr.shape != old.shape:
                raise ValueError(f"{where}: buffer {name!r} has shape {arr.shape}, "
                                 f"the model expects {old.shape}")
            layer.set_buffer(bname, np.array(arr, dtype=old.dtype, copy=True))
        return self

    def extra_state(self):
        """JSON-serialisable state other than arrays (e.g. a random generator); {} if none."""
        return {}

    def set_extra_state(self, state):
        pass

    def named_extra_states(self):
        out = {}
        for name, layer in self.named_layers():
            st = layer.extra_state()
            if st:
                out[name] = st
        return out

    def load_extra_states(self, states):
        layers = dict(self.named_layers())
        for name, st in states.items():
            if name not in layers:
                raise ValueError(f"extra state for unknown layer {name!r}")
            layers[name].set_extra_state(st)

    # ------------------------------------------------------------------ config & display
    def get_config(self):
        """Constructor keyword arguments (JSON-serialisable) that rebuild this layer."""
        return {}

    def to_config(self):
        """``{"class": ..., "config": get_config(), "children": [...]}`` (children only for
        containers)."""
        out = {"class": type(self).__name__, "config": self.get_config()}
        if self._children:
            out["children"] = [c.to_config() for c in self._children.values()]
        if getattr(self, "input_shape", None) is not None:
            out["input_shape"] = [int(s) for s in self.input_shape]
        return out

    @classmethod
    def from_config(cls, config):
        return cls(**config.get("config", {}))

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    # Model-level conveniences. Layers sit below the model floor (they import nothing from
    # model.py or serialization.py); those modules register the functions here when
    # cnncore is imported (see :func:`register_model_function`).
    def summary(self, input_shape=None, print_fn=print):
        """Print (and return) a table of layers, output shapes and parameter counts; see
        :func:`cnncore.model.summary`."""
        return _model_function("summary")(self, input_shape, print_fn=print_fn)

    def save(self, path, optimizer=None):
        """Save architecture, weights and buffers (and ``optimizer``'s state) to one ``.npz``
        file; see :func:`cnncore.serialization.save`."""
        _model_function("save")(path, self, optimizer=optimizer)

    def predict(self, x, batch_size=256):
        """Outputs for ``x`` in eval mode, batch by batch; see :func:`cnncore.model.predict`."""
        return _model_function("predict")(self, x, batch_size=batch_size)

    # ------------------------------------------------------------------ helpers
    def _backward_before_forward(self):
        return RuntimeError(f"{self!r}: backward() called before forward()")

    def _check_dtype(self, x):
        """``x`` in the layer's dtype. An input that NumPy casts to it without loss
        (``np.can_cast(x.dtype, dtype, "safe")``: float16, bool, small integers, byte-swapped
        floats) is converted, as the functional kernels do; other dtypes are refused (a
        float64 input to a float32 layer would lose precision)."""
        want = self._dtype
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self!r}: expected a numpy array, got {type(x).__name__}")
        if x.dtype == want:
            return x
        if np.can_cast(x.dtype, want, "safe"):
            return x.astype(want)
        if x.dtype.kind == "f":
            raise TypeError(f"{self!r}: expected a {want} input (the layer's dtype), got "
                            f"{x.dtype}; convert the data (x.astype(np.{want})) or the model "
                            f"(model.astype(np.{x.dtype}))")
        raise TypeError(f"{self!r}: expected a {want} input, got {x.dtype}; convert the data "
                        f"first, e.g. x.astype(np.float32) / 255 for uint8 images")


class WeightedLayer(Layer):
    """A layer with a ``weight`` and an optional ``bias`` made by named initialisers
    (the shared part of the convolution and linear layers)."""

    def _init_weight_bias(self, weight_shape, bias, weight_init, bias_init, rng):
        from .init import get_initializer
        where = type(self).__name__
        get_initializer(weight_init, where)  # unknown names fail here, before any work
        get_initializer(bias_init, where)
        self.weight_init, self.bias_init = weight_init, bias_init
        self.add_parameter("weight", np.zeros(weight_shape, dtype=self._dtype))
        self.bias = None
        if bias:
            self.add_parameter("bias", np.zeros(weight_shape[0], dtype=self._dtype))
        self._x = None
        self.reset_parameters(rng)

    def reset_parameters(self, rng=None):
        """Draw new weights (and bias) from the layer's initialisers."""
        from .init import get_initializer
        rng = as_generator(rng)
        self.weight.data[...] = get_initializer(self.weight_init)(self.weight.shape, rng,
                                                                  self._dtype)
        self.weight.mark_changed()
        if self.bias is not None:
            self.bias.data[...] = get_initializer(self.bias_init)(self.bias.shape, rng,
                                                                  self._dtype)
            self.bias.mark_changed()


def as_generator(rng):
    """``None`` -> a fresh unseeded Generator, int -> seeded Generator, Generator -> itself."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"

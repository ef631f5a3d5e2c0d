"""Normalisation and regularisation layers: :class:`BatchNorm2d`, :class:`BatchNorm1d`,
:class:`LocalResponseNorm` and :class:`Dropout` (kernels in :mod:`cnncore.functional.norm`)."""

import numpy as np

from ..functional import norm as K
from .base import Layer, as_generator, check_float_dtype, shape_str

__all__ = ["BatchNorm2d", "BatchNorm1d", "LocalResponseNorm", "Dropout",
           "generator_state", "generator_from_state"]


def generator_state(rng):
    """JSON-serialisable state of a numpy Generator."""
    return rng.bit_generator.state


def generator_from_state(state):
    """A new Generator in ``state`` (as returned by :func:`generator_state`)."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    bitgen = getattr(np.random, name, None) if isinstance(name, str) else None
    if bitgen is None or not (isinstance(bitgen, type) and issubclass(bitgen, np.random.BitGenerator)):
        raise ValueError(f"not a numpy bit generator state: {state!r}")
    bg = bitgen()
    bg.state = state
    return np.random.Generator(bg)


class _BatchNorm(Layer):
    _ndims = (4,)
    _expected = "(N, C, H, W)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        where = type(self).__name__
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"{where}: num_features must be a positive int, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{where}: momentum must be in [0, 1], got {momentum}")
        if eps <= 0:
            raise ValueError(f"{where}: eps must be > 0, got {eps}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self._dtype = check_float_dtype(dtype, where)
        self.add_parameter("weight", np.ones(self.num_features, self._dtype))
        self.add_parameter("bias", np.zeros(self.num_features, self._dtype))
        self.add_buffer("running_mean", np.zeros(self.num_features, self._dtype))
        self.add_buffer("running_var", np.ones(self.num_features, self._dtype))
        self._cache = None

    def reset_parameters(self, rng=None):
        self.weight.data.fill(1)
        self.bias.data.fill(0)
        self.running_mean.fill(0)
        self.running_var.fill(1)

    def _check(self, shape, batch=True):
        ndims = self._ndims if batch else tuple(n - 1 for n in self._ndims)
        if len(shape) not in ndims or shape[1 if batch else 0] != self.num_features:
            expected = self._expected.replace("C", str(self.num_features))
            if not batch:
                expected = expected.replace("(N, ", "(")
            raise ValueError(f"{self!r}: expected input {expected}, got {shape_str(shape)}")

    def output_shape(self, input_shape):
        self._check(tuple(input_shape), batch=False)
        return tuple(input_shape)

    def forward(self, x):
        x = self._check_dtype(x)
        self._check(x.shape)
        y, mean, inv_std = K.batch_norm(x, self.weight.data, self.bias.data, self.running_mean,
                                        self.running_var, self.training, self.momentum, self.eps)
        # x itself, not x_hat: backward recomputes x_hat (one activation less kept alive)
        self._cache = (x, mean, inv_std, self.training)
        return y

    def _forward_eval_relu(self, x):
        """``relu(forward(x))`` in eval mode, in one pass over memory (the same values: the
        affine map as :func:`cnncore.functional.batch_norm` computes it, then max(., 0)); the
        cache is the one :meth:`forward` keeps. Called by Sequential for a BatchNorm2d
        followed by a ReLU."""
        x = np.ascontiguousarray(self._check_dtype(x))
        self._check(x.shape)
        dt = x.dtype
        mean = self.running_mean.astype(dt)
        inv_std = (1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)).astype(dt)
        y = K.batch_norm_relu_eval(x, self.weight.data * inv_std, self.bias.data, mean)
        self._cache = (x, mean, inv_std, False)
        return y

    def backward(self, grad_out):
        if self._cache is None:
            raise self._backward_before_forward()
        x, mean, inv_std, training = self._cache
        gx, gg, gb = K.batch_norm_backward(grad_out, x, mean, inv_std, self.weight.data,
                                           training)
        self.weight.grad += gg
        self.bias.grad += gb
        return gx

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "dtype": self._dtype.name}

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` activations per channel, with learned scale
    ``weight`` (gamma) and shift ``bias`` (beta), and ``running_mean`` / ``running_var``
    buffers (updated in training mode, used in eval mode; ``momentum`` as in PyTorch)."""

    _ndims = (4,)
    _expected = "(N, C, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` or ``(N, C, L)`` inputs; see :class:`BatchNorm2d`."""

    _ndims = (2, 3)
    _expected = "(N, C) or (N, C, L)"


class LocalResponseNorm(Layer):
    """Local response normalisation across channels (AlexNet), PyTorch's formula:
    ``y_c = x_c / (k + alpha / size * sum of x_c'^2 over the size channels around c) ** beta``.
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"LocalResponseNorm: size must be a positive int, got {size!r}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self._x = None

    def forward(self, x):
        if x.ndim < 3:
            raise ValueError(f"{self!r}: expected input (N, C, H, W) or (N, C, L), "
                             f"got {shape_str(x.shape)}")
        self._x = x
        return K.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def backward(self, grad_out):
        if self._x is None:
            raise self._backward_before_forward()
        return K.local_response_norm_backward(grad_out, self._x, self.size, self.alpha,
                                              self.beta, self.k)

    def get_config(self):
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class Dropout(Layer):
    """Inverted dropout: in training mode zero each element with probability ``p`` and scale
    the rest by ``1 / (1 - p)``; the identity in eval mode.

    Parameters
    ----------
    p : float in [0, 1)
    seed : int, Generator or None
        Seeds the layer's own generator (``model.initialize(seed)`` reseeds it too). Its
        state is saved with the model, so a resumed run draws the same masks.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.seed = seed if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None
        self._rng = as_generator(seed)
        self._mask = None
        self._ready = False

    def reset_parameters(self, rng=None):
        rng = as_generator(rng)
        self._rng = np.random.default_rng(int(rng.integers(2**63)))

    def forward(self, x):
        y, self._mask = K.dropout(x, self.p, self._rng, self.training)
        self._ready = True
        return y

    def backward(self, grad_out):
        if not self._ready:
            raise self._backward_before_forward()
        return K.dropout_backward(grad_out, self._mask)

    def extra_state(self):
        return {"rng": generator_state(self._rng)}

    def set_extra_state(self, state):
        self._rng = generator_from_state(state["rng"])

    def get_config(self):
        return {"p": self.p, "seed": None if self.seed is None else int(self.seed)}

    def extra_repr(self):
        return f"p={self.p}"

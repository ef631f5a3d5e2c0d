"""Weight initialisers (He / Kaiming and Glorot / Xavier, uniform and normal).

Every initialiser takes ``(shape, rng, dtype)`` and returns a new array; ``rng`` is a
:class:`numpy.random.Generator`, so the same seed always gives the same weights. Fans follow
PyTorch's convention: for a weight ``(out, in, *kernel)``, ``fan_in = in * prod(kernel)`` and
``fan_out = out * prod(kernel)``.
"""

import math

import numpy as np

__all__ = ["fans", "he_uniform", "he_normal", "glorot_uniform", "glorot_normal", "zeros",
           "ones", "get_initializer", "INITIALIZERS"]


def fans(shape):
    """``(fan_in, fan_out)`` of a weight of ``shape`` (Linear ``(out, in)`` or convolution
    ``(out, in/groups, *kernel)``)."""
    if len(shape) < 2:
        raise ValueError(f"fans: a weight needs at least 2 dimensions, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def he_uniform(shape, rng, dtype=np.float32):
    """Kaiming uniform for ReLU: ``U(-b, b)`` with ``b = sqrt(6 / fan_in)``."""
    bound = math.sqrt(6.0 / fans(shape)[0])
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def he_normal(shape, rng, dtype=np.float32):
    """Kaiming normal for ReLU: ``N(0, 2 / fan_in)``."""
    std = math.sqrt(2.0 / fans(shape)[0])
    return (rng.standard_normal(size=shape) * std).astype(dtype)


def glorot_uniform(shape, rng, dtype=np.float32):
    """Xavier uniform: ``U(-b, b)`` with ``b = sqrt(6 / (fan_in + fan_out))``."""
    fi, fo = fans(shape)
    bound = math.sqrt(6.0 / (fi + fo))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def glorot_normal(shape, rng, dtype=np.float32):
    """Xavier normal: ``N(0, 2 / (fan_in + fan_out))``."""
    fi, fo = fans(shape)
    std = math.sqrt(2.0 / (fi + fo))
    return (rng.standard_normal(size=shape) * std).astype(dtype)


def zeros(shape, rng=None, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


def ones(shape, rng=None, dtype=np.float32):
    return np.ones(shape, dtype=dtype)


INITIALIZERS = {
    "he_uniform": he_uniform, "kaiming_uniform": he_uniform,
    "he_normal": he_normal, "kaiming_normal": he_normal,
    "glorot_uniform": glorot_uniform, "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal, "xavier_normal": glorot_normal,
    "zeros": zeros, "ones": ones,
}


def get_initializer(name, where="initializer"):
    """The initialiser called ``name`` (see :data:`INITIALIZERS`)."""
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: unknown initialiser {name!r}; choose one of "
                         f"{', '.join(sorted(INITIALIZERS))}") from None

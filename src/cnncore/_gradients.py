"""The Trainer's check for NaN/Inf gradients (``Trainer(check_gradients=...)``).

The check costs one sum per parameter gradient (no temporary array of the gradient's size):
a NaN or an infinity makes the sum non-finite. Only when a sum is not finite are the values
themselves looked at, since a sum can also overflow for large finite gradients (which is not
an error).
"""

import math

import numpy as np

__all__ = ["MODES", "check_mode", "nonfinite", "describe"]

#: Accepted values of ``check_gradients`` (None means "off").
MODES = ("raise", "warn", "off", None)


def check_mode(value, where="Trainer"):
    """Validate a ``check_gradients`` value; returns "raise", "warn" or "off"."""
    if not isinstance(value, (str, type(None))) or value not in MODES:
        raise ValueError(f"{where}: check_gradients must be 'raise', 'warn', 'off' or None, "
                         f"got {value!r}")
    return "off" if value is None else value


def nonfinite(params):
    """True when the gradient of one of ``params`` holds a NaN or an infinity (a sum that
    overflows, which NumPy would warn about, is not reported)."""
    with np.errstate(over="ignore", invalid="ignore"):
        for p in params:
            g = p.grad
            if not math.isfinite(g.sum()) and not np.isfinite(g).all():
                return True
    return False


def describe(model, params, limit=4):
    """Name the parameters of ``params`` whose gradient is not finite, the last layer first
    (the order backward produces them: the first one named is closest to the output, where
    the NaN most likely started), e.g. ``"'6.weight' (Linear) has 3 non-finite values of
    256"``."""
    names = {id(p): name for name, p in model.named_parameters()}
    layers = dict(model.named_layers())
    parts = []
    for i, p in reversed(list(enumerate(params))):
        bad = int(p.grad.size - np.count_nonzero(np.isfinite(p.grad)))
        if not bad:
            continue
        if id(p) in names:
            name = names[id(p)]
            layer = layers.get(name.rpartition(".")[0])
        else:  # optimised but not part of the model
            name, layer = f"optimiser parameter {i} ({p.name})", None
        kind = f" ({type(layer).__name__})" if layer is not None else ""
        parts.append(f"{name!r}{kind} has {bad} non-finite value{'s' * (bad != 1)} of "
                     f"{p.grad.size}")
    more = len(parts) - limit
    text = ", ".join(parts[:limit])
    return text + (f" and {more} more parameter{'s' * (more != 1)}" if more > 0 else "")

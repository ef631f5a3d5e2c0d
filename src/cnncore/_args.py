"""Argument normalisation shared by :mod:`cnncore.functional` and :mod:`cnncore.reference`.

Only hyper-parameters are parsed here (ints, pairs, padding modes); array checks live in
:mod:`cnncore._checks`.
"""

import numbers

PADDING_MODES = ("valid", "same", "full")


def pair(value, name, *, minimum=None, where="cnncore"):
    """Return ``value`` as a tuple of two Python ints.

    Parameters
    ----------
    value : int or sequence of two ints
    name : str
        Argument name used in error messages.
    minimum : int, optional
        Smallest allowed value of each entry.
    where : str
        The function or layer named in error messages.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{where}: {name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and min(out) < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value!r}")
    return out


def conv_padding(padding, kernel_size, dilation, *, where="conv2d"):
    """Resolve ``padding`` (int, pair or 'valid' / 'same' / 'full') to ``(ph, pw)``.

    'valid' is no padding; 'same' is ``p = d*(k-1)//2`` (for an odd effective kernel, so that
    a stride-1 output keeps the input size); 'full' is ``p = d*(k-1)`` (every partial overlap).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in PADDING_MODES:
            raise ValueError(f"{where}: padding must be an int, a pair or one of "
                             f"{PADDING_MODES}, got {padding!r}")
        span = tuple(d * (k - 1) for k, d in zip(kernel_size, dilation))
        if mode == "valid":
            return (0, 0)
        if mode == "full":
            return span
        if any(s % 2 for s in span):
            raise ValueError(f"{where}: padding='same' needs an odd (dilated) kernel size, got "
                             f"kernel_size={kernel_size}, dilation={dilation}")
        return (span[0] // 2, span[1] // 2)
    return pair(padding, "padding", minimum=0, where=where)


def out_size(size, kernel, stride, padding, dilation, *, where="conv2d", axis="H"):
    """Output length along one axis: ``floor((H + 2p - d(k-1) - 1) / s) + 1``."""
    span = dilation * (kernel - 1) + 1
    if size + 2 * padding < span:
        raise ValueError(f"{where}: kernel extent {span} (kernel {kernel}, dilation {dilation}) is "
                         f"larger than the padded input {axis}={size}+2*{padding}")
    return (size + 2 * padding - span) // stride + 1


def conv1d_as_2d(stride, padding, dilation, *, where="conv1d"):
    """Map conv1d hyper-parameters (ints or 1-tuples; padding also a mode) onto the 2-D
    kernels, which see a height-1 image and a 1 x k kernel: returns the 2-D
    ``(stride, padding, dilation)``."""
    def scalar(v, name, minimum):
        if isinstance(v, (tuple, list)):
            if len(v) != 1:
                raise TypeError(f"{where}: {name} must be an int or a 1-tuple, got {v!r}")
            v = v[0]
        if isinstance(v, str) and name == "padding":
            return v
        return pair(v, name, minimum=minimum, where=where)[0]
    padding = scalar(padding, "padding", 0)
    return ((1, scalar(stride, "stride", 1)),
            padding if isinstance(padding, str) else (0, padding),
            (1, scalar(dilation, "dilation", 1)))


def pool_geometry(height, width, kernel_size, stride, padding, *, where="pool"):
    """``(kernel, stride, padding, out)`` pairs of a pooling window; ``stride=None`` means
    stride = kernel_size."""
    k = pair(kernel_size, "kernel_size", minimum=1, where=where)
    s = k if stride is None else pair(stride, "stride", minimum=1, where=where)
    p = pair(padding, "padding", minimum=0, where=where)
    o = (out_size(height, k[0], s[0], p[0], 1, where=where, axis="H"),
         out_size(width, k[1], s[1], p[1], 1, where=where, axis="W"))
    return k, s, p, o

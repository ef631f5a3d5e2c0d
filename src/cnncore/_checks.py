"""Input checks at the Python boundary: dtypes, shapes, contiguity.

Rules (documented in :mod:`cnncore.functional`):

- float32 and float64 arrays are used as they are (copied only if not C-contiguous, or
  converted to native byte order if big-endian);
- integer, bool and float16 arrays (and nested lists) are cast to the floating dtype of the
  other array arguments, or to float32 if there is none (losslessly, as NumPy promotes them);
- float32 mixed with float64 is a TypeError (we never silently change a dtype you chose);
- complex, object, string and extended-precision (longdouble) arrays are a TypeError;
- index arrays (e.g. saved max-pool argmaxes) must have an integer dtype and are cast to
  int64 (their range is checked by the kernel that uses them).
"""

import numpy as np

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT16 = np.dtype(np.float16)


def _kind_error(where, name, dtype):
    return TypeError(f"{where}: {name} must be float32 or float64 (integer, bool and float16 "
                     f"arrays are cast), got dtype {dtype}")


def check_given(where, name, a):
    """Raise a TypeError naming ``where`` if the required array ``name`` is None."""
    if a is None:
        raise TypeError(f"{where}: {name} is required (an array), got None")


def float_arrays(where, **arrays):
    """Return the arrays (``None`` passes through) as C-contiguous arrays of one float dtype."""
    converted, float_dtype, first_name = {}, None, None
    for name, a in arrays.items():
        if a is None:
            converted[name] = None
            continue
        if type(a) is not np.ndarray:
            a = np.asarray(a)
        native = a.dtype.newbyteorder("=") if a.dtype.kind == "f" else a.dtype
        if native in _SUPPORTED:  # big-endian float32/float64 count as what they hold
            if float_dtype is None:
                float_dtype, first_name = native, name
            elif native != float_dtype:
                raise TypeError(f"{where}: {first_name} has dtype {float_dtype} but {name} has "
                                f"dtype {a.dtype}; convert one of them (e.g. "
                                f"{name}.astype(np.{float_dtype}))")
        elif a.dtype.kind not in "iub" and native != _FLOAT16:
            raise _kind_error(where, name, a.dtype)
        converted[name] = a
    dtype = float_dtype if float_dtype is not None else np.dtype(np.float32)
    out = [a if a is None or (a.dtype == dtype and a.flags.c_contiguous)
           else np.asarray(a, dtype=dtype, order="C") for a in converted.values()]
    return out if len(out) > 1 else out[0]


def check_ndim(where, name, a, ndim, layout):
    if a.ndim != ndim:
        raise ValueError(f"{where}: {name} must be {ndim}-D {layout}, got shape {a.shape}")


def check_shape(where, name, a, expected):
    if a.shape != tuple(expected):
        raise ValueError(f"{where}: {name} must have shape {tuple(expected)}, got {a.shape}")


def check_int(where, name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_blas_size(where, *sizes):
    """BLAS takes 32-bit ints: refuse matrices whose side or area would overflow them."""
    limit = 2 ** 31 - 1
    for s in sizes:
        if s > limit:
            raise ValueError(f"{where}: a matrix of {s} elements is too large for 32-bit BLAS; "
                             f"use a smaller batch or image")


def index_array(where, name, a, shape):
    """``a`` as a C-contiguous int64 array of ``shape``; other integer dtypes are cast, any
    other dtype is a TypeError."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name} must be an integer array, got dtype {a.dtype}")
    check_shape(where, name, a, shape)
    return np.ascontiguousarray(a, dtype=np.int64)

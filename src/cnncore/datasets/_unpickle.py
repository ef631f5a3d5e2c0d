"""A restricted unpickler for pickles of plain numpy arrays.

``pickle.load`` runs whatever callable a pickle names, so it must never see
downloaded data.  :class:`NumpyUnpickler` resolves only the globals numpy's
array pickles use (``_reconstruct``, ``ndarray``, ``dtype`` and ``scalar``,
under both the numpy 1 module name ``numpy.core.multiarray`` and the numpy 2
name ``numpy._core.multiarray``); any other global -- ``os.system``,
``builtins.eval``, ``subprocess.Popen``... -- raises
:class:`pickle.UnpicklingError` before anything is called.  Containers built
from opcodes alone (tuples, lists, dicts, strings, numbers) load as usual.

Nor can a few bytes make it allocate gigabytes. It is built on the pure-Python
unpickler, whose memo is a dict (the C one grows an array to the largest
``LONG_BINPUT`` index: 1 GB touched for a 9-byte pickle, up to 64 GB); lengths
announced by ``FRAME``, ``BINBYTES8``, ``BYTEARRAY8``... are read in chunks, so
memory follows the bytes actually there, not the length claimed;
``_reconstruct`` only makes the empty array that numpy's pickles then fill from
the bytes they carry; ``scalar`` needs exactly its dtype's itemsize of data; and
``ndarray`` cannot be called to make an array of any shape.
"""

from __future__ import annotations

import functools
import io
import pickle
import struct
from typing import Any, BinaryIO, Callable, Dict, Tuple

__all__ = ["NumpyUnpickler", "restricted_load", "restricted_loads", "CORRUPT_PICKLE_ERRORS"]

#: What unpickling a corrupt or hostile stream raises (besides MemoryError): pickle's own
#: UnpicklingError, and the errors its opcodes and numpy's constructors raise on bad
#: arguments. Readers catch these to report a corrupt file.
CORRUPT_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
                         IndexError, AttributeError, OverflowError, RuntimeError,
                         struct.error)  # (RuntimeError: numpy's "pickle file may be corrupted?")


@functools.lru_cache(maxsize=None)
def _allowed_globals() -> Dict[Tuple[str, str], Callable[..., Any]]:
    import numpy as np

    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        # what ndarray.__reduce__ writes: _reconstruct(ndarray, (0,), b'b'), an empty array
        # that BUILD (__setstate__) then fills from the data in the stream
        if subtype is not _NDARRAY or not isinstance(shape, tuple) or len(shape) != 1 \
                or shape[0] != 0 or dtype not in (b"b", "b"):
            raise pickle.UnpicklingError(
                f"refusing _reconstruct{(subtype, shape, dtype)!r}: numpy array pickles "
                "reconstruct an empty numpy.ndarray of dtype 'b'")
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def dtype(*args: Any) -> Any:
        # np.dtype parses strings like "(2,3)f4" with ast.literal_eval, whose SyntaxError
        # (not a ValueError) escapes on a malformed one
        try:
            return np.dtype(*args)
        except SyntaxError as e:
            raise pickle.UnpicklingError(f"invalid dtype{args!r}: {e}") from None

    def scalar(*args: Any) -> Any:
        # numpy pickles a scalar as scalar(dtype, <itemsize bytes>); scalar(dtype) alone, or
        # short data, would make numpy allocate dtype.itemsize bytes (2 GB for 'V2147483647')
        if len(args) != 2 or not isinstance(args[0], np.dtype) or args[0].hasobject \
                or not isinstance(args[1], (bytes, str)) or len(args[1]) != args[0].itemsize:
            raise pickle.UnpicklingError(
                "refusing scalar(...): numpy scalar pickles give a dtype without objects and "
                "exactly its itemsize of data")
        return multiarray.scalar(*args)

    allowed: Dict[Tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _NdarrayMarker:
    """Stands for ``numpy.ndarray`` in a pickle: an argument of ``_reconstruct``, not a
    callable (``ndarray(shape)`` would allocate any size)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayMarker()


class NumpyUnpickler(pickle._Unpickler):  # the pure-Python one: see the module docstring
    """Unpickler that refuses every global but numpy's array-reconstruction ones.

    Parameters
    ----------
    file : binary file object
        The pickle stream.
    encoding : str, optional
        How Python 2 ``str`` objects are decoded; ``"latin1"`` (the default)
        is what numpy needs for Python 2 array pickles.
    """

    def __init__(self, file: BinaryIO, *, encoding: str = "latin1") -> None:
        super().__init__(_ChunkedReads(file), encoding=encoding)

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_bytearray8(self) -> None:
        # the base class makes bytearray(n) for the n the stream announces, then reads
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)
        if len(data) < n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def _load_build(self) -> None:
        # numpy's pickles BUILD (``__setstate__``) arrays and dtypes only, a dtype with the
        # state numpy has written since 1.x; other states trip NumPy into SystemErrors
        import numpy as np

        state, inst = self.stack[-1], self.stack[-2]
        if not (isinstance(inst, np.ndarray) or (isinstance(inst, np.dtype)
                                                  and _dtype_state(inst, state))):
            raise pickle.UnpicklingError(
                f"refusing BUILD of {type(inst).__name__} with {type(state).__name__} state: "
                "numpy array pickles set the state of arrays and of dtypes only")
        try:
            super().load_build()
        except SystemError as e:  # a state NumPy's C code does not check
            raise pickle.UnpicklingError(f"invalid numpy state in BUILD ({e})") from None

    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _allowed_globals()))
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy array "
                f"globals are allowed ({allowed})") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent id in restricted pickle")


def _dtype_state(inst: Any, state: Any) -> bool:
    """Whether ``state`` is what ``inst.__reduce__()`` could have written for a dtype like
    ``inst``: ``(3, endian, subarray, names, fields, elsize, alignment, flags)``, or version 4
    with metadata after. NumPy's ``__setstate__`` trusts the flags: ``flags=255`` on a
    float64 marks it as holding Python objects, and NumPy later crashes decref'ing them."""
    import numpy as np

    if not isinstance(state, tuple) or (len(state), state[:1]) not in ((8, (3,)), (9, (4,))):
        return False
    _, endian, subarray, names, fields, elsize, alignment, flags = state[:8]
    if endian not in ("<", ">", "|", "=") or not all(
            type(n) is int for n in (elsize, alignment, flags)):
        return False
    try:
        if subarray is not None:
            expected = np.dtype(subarray)
        elif names is not None:
            if not isinstance(names, tuple) or not isinstance(fields, dict) or \
                    not set(names) <= set(fields):  # (titles are extra keys)
                return False
            expected = np.dtype({"names": list(names),
                                 "formats": [fields[n][0] for n in names],
                                 "offsets": [fields[n][1] for n in names],
                                 "titles": [fields[n][2] if len(fields[n]) > 2 else None
                                            for n in names],
                                 "itemsize": elsize})
        else:
            if fields is not None or elsize not in (-1, inst.itemsize):
                return False
            expected = inst
    except Exception as e:  # a malformed subarray or field list
        if isinstance(e, MemoryError):
            raise
        return False
    aligned_struct = 0x80  # NPY_ALIGNED_STRUCT: how the struct was declared, not its content
    return flags & ~aligned_struct == expected.flags & ~aligned_struct


class _ChunkedReads:
    """``file`` for the unpickler: ``read(n)`` for a large ``n`` reads in chunks, so that
    what is allocated follows the bytes actually in the file, not the length a corrupt
    stream announces (a buffered file allocates ``n`` bytes up front)."""

    CHUNK = 1 << 24

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.readline = file.readline

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n <= self.CHUNK:
            return self._file.read(n)
        parts = []
        while n > 0:
            part = self._file.read(min(n, self.CHUNK))
            if not part:
                break
            parts.append(part)
            n -= len(part)
        return b"".join(parts)


def restricted_load(file: BinaryIO, *, encoding: str = "latin1") -> Any:
    """Load one pickle from ``file`` with :class:`NumpyUnpickler`."""
    return NumpyUnpickler(file, encoding=encoding).load()


def restricted_loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """Load one pickle from bytes with :class:`NumpyUnpickler`."""
    return restricted_load(io.BytesIO(data), encoding=encoding)

"""A restricted unpickler for pickles of plain numpy arrays.

``pickle.load`` runs whatever callable a pickle names, so it must never see
downloaded data.  :class:`NumpyUnpickler` resolves only the globals numpy's
array pickles use (``_reconstruct``, ``ndarray``, ``dtype`` and ``scalar``,
under both the numpy 1 module name ``numpy.core.multiarray`` and the numpy 2
name ``numpy._core.multiarray``); any other global -- ``os.system``,
``builtins.eval``, ``subprocess.Popen``... -- raises
:class:`pickle.UnpicklingError` before anything is called.  Containers built
from opcodes alone (tuples, lists, dicts, strings, numbers) load as usual.
"""

from __future__ import annotations

import functools
import io
import pickle
from typing import Any, BinaryIO, Callable, Dict, Tuple

__all__ = ["NumpyUnpickler", "restricted_load", "restricted_loads"]


@functools.lru_cache(maxsize=None)
def _allowed_globals() -> Dict[Tuple[str, str], Callable[..., Any]]:
    import numpy as np

    multiarray: Any = getattr(np, "_core", None) or getattr(np, "core")  # numpy >= 2 / 1.x
    multiarray = multiarray.multiarray
    allowed: Dict[Tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class NumpyUnpickler(pickle.Unpickler):
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
        super().__init__(file, encoding=encoding)

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


def restricted_load(file: BinaryIO, *, encoding: str = "latin1") -> Any:
    """Load one pickle from ``file`` with :class:`NumpyUnpickler`."""
    return NumpyUnpickler(file, encoding=encoding).load()


def restricted_loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """Load one pickle from bytes with :class:`NumpyUnpickler`."""
    return restricted_load(io.BytesIO(data), encoding=encoding)

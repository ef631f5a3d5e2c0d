"""atheris harness: the CIFAR-10 batch reader (``cnncore.examples.cifar_like.read_cifar_batch``).

Documented outcome for any file: uint8 (N, 32, 32, 3) images and N int64 labels, or
ValueError; never code run, never a crash.
"""
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import numpy as np  # noqa: E402

from cnncore.examples.cifar_like import read_cifar_batch  # noqa: E402

PATH = os.path.join(_harness.SCRATCH or "/tmp", f"cnncore-fuzz-cifar-{os.getpid()}")


def seeds():
    rng = np.random.default_rng(0)
    out = []
    for n in (1, 2):
        batch = {b"batch_label": b"training batch 1 of 5", b"labels": list(range(n)),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [b"x.png"] * n}
        out += [pickle.dumps(batch, protocol=p) for p in (3, 4)]
    out.append(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [3]}, protocol=3))
    return out


def one_input(data):
    with open(PATH, "wb") as f:
        f.write(data)
    x, y = read_cifar_batch(PATH)
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3) and y.shape == (len(x),)


if __name__ == "__main__":
    try:
        _harness.main("cifar", seeds, one_input, (ValueError,),
                      modules=["cnncore.examples.cifar_like", "cnncore.datasets._unpickle", "pickle"])
    finally:
        if os.path.exists(PATH):
            os.unlink(PATH)

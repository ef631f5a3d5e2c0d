#!/usr/bin/env python
"""Fill cnncore's MNIST cache, so later runs (and the real-data tests) need no network.

Usage: ``python tools/fetch_mnist.py``.  Calls :func:`cnncore.datasets.load_mnist`,
which reads the data from ``$CNNCORE_DATA/mnist`` or the cache if present, else
downloads it into the cache (``$CNNCORE_CACHE/mnist``, else
``$XDG_CACHE_HOME/cnncore/mnist``, else ``~/.cache/cnncore/mnist``).  Works from
a source checkout too: ``src/`` is put on the path if cnncore is not installed.
"""

import sys
import time
import types
from pathlib import Path


def _import_datasets():
    """Import cnncore.datasets, from a source checkout if cnncore is not installed.

    cnncore.datasets needs only numpy; if the parent package cannot be imported
    (e.g. its compiled kernels are not built yet), the subpackage is loaded on
    its own under an empty stand-in for ``cnncore``.
    """
    try:
        import cnncore.datasets as datasets
        return datasets
    except ImportError:
        pass
    package_dir = Path(__file__).resolve().parents[1] / "src" / "cnncore"
    sys.path.insert(0, str(package_dir.parent))
    for name in [m for m in sys.modules if m == "cnncore" or m.startswith("cnncore.")]:
        del sys.modules[name]
    try:
        import cnncore.datasets as datasets
        return datasets
    except ImportError:
        for name in [m for m in sys.modules if m == "cnncore" or m.startswith("cnncore.")]:
            del sys.modules[name]
    stub = types.ModuleType("cnncore")
    stub.__path__ = [str(package_dir)]
    sys.modules["cnncore"] = stub
    import cnncore.datasets as datasets
    return datasets


def main() -> int:
    datasets = _import_datasets()
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist()
    seconds = time.perf_counter() - start
    print(f"MNIST ready in {seconds:.1f} s: x_train {x_train.shape} {x_train.dtype}, "
          f"x_test {x_test.shape}, labels {y_train.dtype}; cache: {datasets.cache_dir('mnist')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

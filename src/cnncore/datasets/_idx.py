"""Reader and writer for the IDX format of the MNIST family.

An IDX file is a 4-byte magic number ``0x00 0x00 TT NN`` (``TT`` the element
type, ``NN`` the number of dimensions), then ``NN`` big-endian unsigned 32-bit
sizes, then the elements in C order, big-endian.  The MNIST files use type
``0x08`` (unsigned byte): ``2051`` (``0x00000803``) is the magic number of an
image file, ``2049`` (``0x00000801``) that of a label file.

Files may be gzip-compressed; the reader recognises gzip by its own magic bytes,
whatever the file is called.  Only numpy and the standard library are used.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from ._download import atomic_open

__all__ = ["read_idx", "write_idx", "parse_idx", "encode_idx"]

PathLike = Union[str, "os.PathLike[str]"]

#: IDX type code -> big-endian numpy dtype.
IDX_DTYPES: Dict[int, "np.dtype[Any]"] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DIM = 2**32 - 1


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file.

    Parameters
    ----------
    data : bytes-like
        The whole file content.
    source : str, optional
        Name used in error messages (usually the file path).

    Returns
    -------
    numpy.ndarray
        A new, writeable array in native byte order with the shape read from
        the header.

    Raises
    ------
    ValueError
        If the magic number is wrong, the type code unknown, or the data is
        shorter or longer than the header announces.
    """
    view = memoryview(data).cast("B")
    if len(view) < 4:
        raise ValueError(
            f"{source}: not an IDX file: expected at least a 4-byte magic number, "
            f"got {len(view)} byte(s)")
    magic = bytes(view[:4])
    code, ndim = magic[2], magic[3]
    if magic[:2] != b"\x00\x00" or code not in IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{source}: bad IDX magic number 0x{magic.hex()}: expected 0x0000TTNN "
            f"with TT one of {', '.join(f'{c:02x}' for c in IDX_DTYPES)} and NN >= 1 "
            f"(MNIST images are 0x00000803, labels 0x00000801)")
    header_len = 4 + 4 * ndim
    if len(view) < header_len:
        raise ValueError(
            f"{source}: truncated IDX header: expected {header_len} bytes for "
            f"{ndim} dimension(s), got {len(view)}")
    shape = struct.unpack(f">{ndim}I", view[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    received = len(view) - header_len
    if received != expected:
        what = "truncated" if received < expected else "trailing bytes in"
        raise ValueError(
            f"{source}: {what} IDX data: header announces shape {shape} of "
            f"{dtype.newbyteorder('=').name}, i.e. {expected} bytes of data, got {received}")
    array = np.frombuffer(view, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as the bytes of an uncompressed IDX file.

    Parameters
    ----------
    array : array_like
        At least one dimension; dtype uint8, int8, int16, int32, float32 or
        float64 (the six IDX element types).

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        For a 0-d array, another dtype, or a dimension too large for IDX.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODE_OF:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}: expected one of "
            f"{', '.join(dt.newbyteorder('=').name for dt in IDX_DTYPES.values())}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got an array of shape {array.shape}")
    if max(array.shape) > _MAX_DIM:
        raise ValueError(f"IDX dimensions must be below 2**32, got shape {array.shape}")
    code = _CODE_OF[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    return header + body


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not.

    Parameters
    ----------
    path : str or os.PathLike
        The file.  Compression is detected from the content, not the name.

    Returns
    -------
    numpy.ndarray
        See :func:`parse_idx`.

    Raises
    ------
    ValueError
        If the file is not a well-formed IDX file, or a corrupt or truncated
        gzip stream.
    OSError
        If the file cannot be read.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data: {exc}") from exc
    return parse_idx(data, source=str(path))


def write_idx(path: PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write an array as an IDX file, atomically.

    The file is written under a temporary name in the same directory and
    renamed into place with :func:`os.replace`, so an interrupted write never
    leaves a partial file under ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; missing parent directories are created.
    array : array_like
        See :func:`encode_idx`.
    compress : bool, optional
        Gzip the file.  By default, gzip if and only if ``path`` ends in ``.gz``.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    data = encode_idx(array)
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with atomic_open(path) as handle:
        handle.write(data)
    return path

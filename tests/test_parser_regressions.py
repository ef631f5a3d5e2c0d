"""One regression test per bug that fuzzing (tools/fuzz/) found in the parsers of files a user
may have downloaded: the restricted unpickler, the CIFAR-10 batch reader and cnncore.load.
Each input is the smallest form of what the fuzzer produced, written out by hand."""

import io
import json
import pickle
import resource
import struct
import time
import zipfile

import numpy as np
import pytest

from cnncore import serialization, zoo
from cnncore.datasets._unpickle import CORRUPT_PICKLE_ERRORS, restricted_load, restricted_loads
from cnncore.examples.cifar_like import read_cifar_batch
from cnncore.layers import (BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, Flatten, Linear, ReLU,
                            Residual, Sequential)
from cnncore.serialization import load, load_checkpoint

NP_CORE = "numpy._core.multiarray" if np.__version__ >= "2" else "numpy.core.multiarray"


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _global(module, name):
    return b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + \
        name.encode() + b"\x93"


# ---------------------------------------------------------------------- restricted unpickler
def test_long_binput_with_a_huge_index_allocates_nothing():
    """The C unpickler grows its memo array to the index: this 9-byte pickle touched 1 GB."""
    data = b"\x80\x02N" + b"r" + struct.pack("<I", 2**26) + b"."
    before = _peak_rss_mb()
    assert restricted_loads(data) is None
    assert _peak_rss_mb() - before < 100


@pytest.mark.parametrize("opcode", [b"\x95", b"\x8e", b"\x96"])  # FRAME, BINBYTES8, BYTEARRAY8
def test_announced_lengths_are_not_allocated_up_front(tmp_path, opcode):
    """A length of 2**60 announced by a 12-byte file raised MemoryError (a buffered file
    allocates what read(n) asks for; bytearray(n) zero-fills n bytes)."""
    path = tmp_path / "p.pkl"
    path.write_bytes(b"\x80\x05" + opcode + struct.pack("<Q", 2**60) + b"abc")
    with open(path, "rb") as f, pytest.raises(CORRUPT_PICKLE_ERRORS):
        restricted_load(f)


def test_reconstruct_only_makes_the_empty_array_numpy_pickles_fill():
    big = b"\x80\x04" + _global(NP_CORE, "_reconstruct") + _global("numpy", "ndarray") + \
        b"J\x00\x00\x00\x40\x85C\x01b\x87R."  # _reconstruct(ndarray, (2**30,), b'b')
    with pytest.raises(pickle.UnpicklingError, match="empty numpy.ndarray"):
        restricted_loads(big)


def test_reconstruct_takes_no_dtype_string():
    """_reconstruct(ndarray, (0,), ',4'): NumPy parses the string, SyntaxError escaped."""
    data = b"\x80\x04" + _global(NP_CORE, "_reconstruct") + _global("numpy", "ndarray") + \
        b"K\x00\x85\x8c\x02,4\x87R."
    with pytest.raises(pickle.UnpicklingError, match="empty numpy.ndarray"):
        restricted_loads(data)


def test_ndarray_cannot_be_called():
    data = b"\x80\x04" + _global("numpy", "ndarray") + b"J\x00\x00\x00\x40\x85R."
    with pytest.raises(CORRUPT_PICKLE_ERRORS):  # ndarray((2**30,)) would allocate 1 GB
        restricted_loads(data)


def test_build_of_a_dtype_with_a_short_state_is_refused():
    """dtype('f4', False, True).__setstate__((3, '<', -1, -1, 0)) is a SystemError in NumPy."""
    data = (b"\x80\x04" + _global("numpy", "dtype") + b"\x8c\x02f4\x89\x88\x87R"
            b"(K\x03\x8c\x01<J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.")
    with pytest.raises(pickle.UnpicklingError, match="BUILD"):
        restricted_loads(data)


def test_build_of_a_dtype_with_a_mismatched_state_is_refused():
    """Version 3 with 9 items: NumPy's __setstate__ returned NULL without an exception."""
    data = (b"\x80\x04" + _global("numpy", "dtype") + b"\x8c\x02f4\x89\x88\x87R"
            b"(K\x03\x8c\x01<NNN)J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.")
    with pytest.raises(pickle.UnpicklingError, match="BUILD"):
        restricted_loads(data)


def test_malformed_dtype_string():
    """np.dtype("(,)f4") raised SyntaxError (from ast.literal_eval)."""
    data = b"\x80\x04" + _global("numpy", "dtype") + b"\x8c\x05(,)f4\x85R."
    with pytest.raises(pickle.UnpicklingError, match="invalid dtype"):
        restricted_loads(data)


def test_structured_scalar_without_an_array_is_a_corrupt_pickle(tmp_path):
    """numpy's scalar() raises RuntimeError ("The pickle file may be corrupted?") for a
    structured void with an object field: one of CORRUPT_PICKLE_ERRORS, so the CIFAR reader
    reports a corrupt file."""
    data = (b"\x80\x04" + _global(NP_CORE, "scalar") + _global("numpy", "dtype") +
            b"]\x8c\x01a\x8c\x01O\x86a\x85R" + b"K\x05\x86R.")
    with pytest.raises(CORRUPT_PICKLE_ERRORS):
        restricted_loads(data)
    (tmp_path / "b").write_bytes(data)
    with pytest.raises(ValueError, match="corrupt pickle"):
        read_cifar_batch(str(tmp_path / "b"))


@pytest.mark.parametrize("data_op", [b"", b"C\x01x", b"\x8c\x01x"])
def test_scalar_needs_exactly_its_itemsize_of_data(data_op):
    """scalar(dtype('V2147483647')) without data made numpy allocate the 2 GB itemsize
    (found by fuzzing: MemoryError under the harness's address-space cap); short data, or a
    str, too."""
    data = (b"\x80\x04" + _global(NP_CORE, "scalar") + _global("numpy", "dtype") +
            b"\x8c\x0bV2147483647\x85R" + data_op + (b"\x86R." if data_op else b"\x85R."))
    before = _peak_rss_mb()
    with pytest.raises(pickle.UnpicklingError, match="itemsize"):
        restricted_loads(data)
    assert _peak_rss_mb() - before < 100


def test_dtype_flags_from_the_stream_are_not_trusted():
    """flags=255 in a float64's BUILD state marked it as holding Python objects: NumPy then
    crashed the interpreter (found by fuzzing: "get_clear_loop not set", deadly signal).
    Run in a subprocess, so that a regression shows as a crash there, not here."""
    import subprocess
    import sys
    data = (b"\x80\x04" + _global("numpy", "dtype") + b"\x8c\x02f8\x89\x88\x87R"
            b"(K\x03\x8c\x01>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\xfftb.")
    code = ("import sys, numpy as np; from cnncore.datasets._unpickle import restricted_loads\n"
            "try:\n    d = restricted_loads(sys.stdin.buffer.read())\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
            "else:\n    a = np.zeros(3, d); del a, d\n")
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.startswith(b"UnpicklingError") and b"BUILD" in out.stdout


def test_build_of_other_objects_is_refused():
    data = b"\x80\x04" + _global("numpy", "ndarray") + b"}\x8c\x01a\x8c\x01bsb."
    with pytest.raises(pickle.UnpicklingError, match="BUILD"):
        restricted_loads(data)


def test_numpy_pickles_still_load():
    objs = [np.arange(6, dtype=">f8").reshape(2, 3).T, np.dtype([("a", "<i4"), ("b", "f8", (2,))]),
            np.float32(1.5), {b"data": np.zeros((2, 3), np.uint8), b"labels": [1, 2]}]
    for protocol in (3, 4):
        data = pickle.dumps(objs, protocol=protocol)
        assert repr(restricted_loads(data)) == repr(pickle.loads(data))


# ---------------------------------------------------------------------- CIFAR-10 batches
@pytest.mark.parametrize("content, match", [
    (pickle.dumps([1, 2]), "expected a dict"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}), "'data'"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "'data'"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "x"]}), "'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "'labels'"),
    (b"\x80\x04}\x94(\x8c\x04data\x94", "corrupt pickle"),
    (b"\x80\x04\x95" + struct.pack("<Q", 176093662437) + b"\x00", "corrupt pickle"),
])
def test_cifar_batch_reader_refuses_bad_files_with_value_errors(tmp_path, content, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        read_cifar_batch(str(path))
    assert str(path) in str(e.value)


# ---------------------------------------------------------------------- cnncore.load
def _model():
    return Sequential(Flatten(), Linear(3, 2)).initialize(0)


def _arrays(model=None):
    buf = io.BytesIO()
    np.savez(buf, **serialization._model_arrays(model or _model()))
    buf.seek(0)
    with np.load(buf) as f:
        return {k: f[k] for k in f.files}


def _write(path, arrays):
    np.savez(path, **arrays)
    return path


def test_member_that_is_not_an_npy_array(tmp_path):
    path = _write(tmp_path / "m.npz", _arrays())
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("__architecture__", b"not npy")  # np.load returns it as bytes
    with pytest.raises(ValueError, match="not a .npy array"):
        load(path)


def test_unsupported_zip_version(tmp_path):
    path = _write(tmp_path / "m.npz", _arrays())
    raw = bytearray(path.read_bytes())
    cd = raw.rindex(b"PK\x01\x02")  # a central directory entry: "version needed" = 9.9
    raw[cd + 6:cd + 8] = struct.pack("<H", 99)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="NotImplementedError"):
        load(path)


def test_npy_header_announcing_more_than_the_member_holds(tmp_path):
    path = tmp_path / "m.npz"
    arrays = _arrays()
    with zipfile.ZipFile(path, "w") as z:
        for k, v in arrays.items():
            if k == "param/1.weight":
                continue
            buf = io.BytesIO()
            np.lib.format.write_array(buf, v)
            z.writestr(k + ".npy", buf.getvalue())
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (2**40,)})
        z.writestr("param/1.weight.npy", header.getvalue() + b"\0" * 64)
    t = time.perf_counter()
    with pytest.raises(ValueError, match="announces shape"):
        load(path)
    assert time.perf_counter() - t < 5


def test_strings_with_invalid_code_points(tmp_path):
    """NumPy turns UCS-4 code points above U+10FFFF into a malformed Python str (which
    later raised SystemError in json and in the layer constructors)."""
    bad = np.frombuffer(np.array([0x110000] + [ord(c) for c in "{}"], "<u4").tobytes(), "<U3")
    for key in ("__architecture__", "__format__", "__extra_state__"):
        path = _write(tmp_path / "m.npz", dict(_arrays(), **{key: bad.reshape(())}))
        with pytest.raises(ValueError):
            load(path)


@pytest.mark.parametrize("layer", [
    {"class": "Linear", "config": {"in_features": 10**6, "out_features": 10**6}},  # 4 TB
    {"class": "BatchNorm2d", "config": {"num_features": 10**9}},  # 16 GB, was touched: 15 s
    {"class": "Conv2d", "config": {"in_channels": 4096, "out_channels": 4096,
                                   "kernel_size": [64, 64]}},
    {"class": "Linear", "config": {"in_features": 10**30, "out_features": 2}},
])
def test_absurd_architecture_is_refused_before_allocating(tmp_path, layer):
    arch = {"class": "Sequential", "config": {}, "children": [layer]}
    path = _write(tmp_path / "m.npz", dict(_arrays(), __architecture__=np.array(json.dumps(arch))))
    before, t = _peak_rss_mb(), time.perf_counter()
    with pytest.raises(ValueError, match="needs .* elements but the file holds only"):
        load(path)
    assert time.perf_counter() - t < 5 and _peak_rss_mb() - before < 100


def test_parameter_count_from_the_config_is_exact():
    """The pre-check above must never refuse a real model: its count equals the model's."""
    models = [
        Sequential(Conv2d(4, 6, (3, 5), groups=2, bias=False), BatchNorm2d(6),
                   Residual(Conv2d(6, 6, 1)), Conv1d(6, 3, 3), BatchNorm1d(3), ReLU(),
                   Flatten(), Linear(3, 2, bias=False)),
        zoo.resnet(18, variant="cifar", width=4), zoo.get_model("densenet121", variant="cifar",
                                                               growth_rate=4),
        zoo.vgg(11, variant="cifar", width=4), zoo.lenet5(),
    ]
    for m in models:
        want = sum(p.size for p in m.parameters()) + sum(b.size for _, b in m.named_buffers())
        assert serialization._parameter_elements(m.to_config()) == want, type(m).__name__


@pytest.mark.parametrize("depth", [900, 100000])
def test_deeply_nested_json_is_refused(tmp_path, depth):
    text = '{"class": "Sequential", "children": [' * depth + '{"class": "Flatten"}' + "]}" * depth
    path = _write(tmp_path / "m.npz", dict(_arrays(), __architecture__=np.array(text)))
    with pytest.raises(ValueError, match="nested too deeply"):
        load(path)


@pytest.mark.parametrize("extra", ["[1]", '"x"', "3"])
def test_extra_state_must_be_an_object(tmp_path, extra):
    path = _write(tmp_path / "m.npz", dict(_arrays(), __extra_state__=np.array(extra)))
    with pytest.raises(ValueError, match="__extra_state__"):
        load(path)


@pytest.mark.parametrize("dtype", [complex, np.int64, bool, "U1", "M8[s]", [("a", "f4")]])
def test_parameters_of_a_wrong_dtype_are_refused(tmp_path, dtype):
    path = _write(tmp_path / "m.npz",
                  dict(_arrays(), **{"param/1.weight": np.zeros((2, 3), dtype)}))
    with pytest.raises(ValueError, match="param/1.weight.*dtype"):
        load(path)


def test_float16_parameters_still_load(tmp_path):
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    path = _write(tmp_path / "m.npz", dict(_arrays(), **{"param/1.weight": w}))
    np.testing.assert_array_equal(load_checkpoint(path).model.parameters()[0].data, w)

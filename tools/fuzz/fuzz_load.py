"""atheris harness: ``cnncore.load`` / ``load_checkpoint`` (npz + architecture JSON).

Two kinds of input, chosen by the first byte:

* even: the rest is the file itself (zip structure, npy headers, everything);
* odd: the rest is a list of zip members, ``[u16 name length][name][u32 size][bytes]...``,
  that the harness writes into a well-formed zip (CRCs right), so that mutations reach the
  npy headers, the architecture JSON, the layer state and the optimiser entries instead of
  stopping at a CRC error.

Documented outcome for any file: a model, or ValueError naming the file. Never code run,
never a crash, never more memory than the file's arrays (the harness caps the address space
and watches the peak RSS).
"""
import io
import os
import struct
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import numpy as np  # noqa: E402

import cnncore  # noqa: E402
from cnncore.serialization import load_checkpoint  # noqa: E402

PATH = os.path.join(_harness.SCRATCH or "/tmp", f"cnncore-fuzz-load-{os.getpid()}.npz")


def _models():
    from cnncore.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv1d, Conv2d,
                                Dropout, Flatten, GlobalAvgPool2d, Identity, LeakyReLU, Linear,
                                LocalResponseNorm, MaxPool2d, ReLU, Residual, Sequential,
                                Sigmoid)
    from cnncore.losses import SoftmaxCrossEntropy
    from cnncore.optim import SGD, Adam
    from cnncore.trainer import Trainer

    rich = Sequential(
        Conv2d(2, 4, 3, padding="same"), BatchNorm2d(4), ReLU(),
        Residual([Conv2d(4, 4, 3, padding=1, bias=False), Sigmoid()]),
        Concat(Identity(), Conv2d(4, 2, 1)), LocalResponseNorm(3),
        MaxPool2d(2), AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        Residual(Conv2d(6, 6, 3, stride=2, padding=1), shortcut=Conv2d(6, 6, 1, stride=2)),
        LeakyReLU(0.2), GlobalAvgPool2d(), BatchNorm1d(6), Dropout(0.3), Linear(6, 3),
    ).initialize(0)
    small = Sequential(Conv1d(2, 2, 3), Flatten(), Linear(4, 2)).initialize(1)
    tiny = Sequential(Flatten(), Linear(3, 2)).initialize(2)
    x = np.random.default_rng(0).standard_normal((4, 2, 8, 8)).astype(np.float32)
    t = Trainer(rich, SoftmaxCrossEntropy(), Adam(rich.parameters(), lr=0.01), seed=0)
    t.fit(x, np.arange(4) % 3, epochs=1, batch_size=4, verbose=0)
    return [(rich, t), (small, None), (tiny, SGD(tiny.parameters(), lr=0.1, momentum=0.9)),
            (tiny.astype(np.float64), None)]


def _members_to_bytes(members):
    out = b""
    for name, data in members:
        n = name.encode()
        out += struct.pack("<H", len(n)) + n + struct.pack("<I", len(data)) + data
    return out


def _bytes_to_members(data):
    members, i = [], 0
    while i + 2 <= len(data):
        (n,) = struct.unpack_from("<H", data, i)
        name = data[i + 2:i + 2 + n].decode("utf-8", "replace")
        i += 2 + n
        if i + 4 > len(data):
            break
        (size,) = struct.unpack_from("<I", data, i)
        members.append((name, data[i + 4:i + 4 + size]))
        i += 4 + size
    return members


def seeds():
    from cnncore.trainer import Trainer

    out = []
    for model, extra in _models():
        buf = io.BytesIO()
        if isinstance(extra, Trainer):
            extra.save_checkpoint(PATH)
        else:
            cnncore.save(PATH, model, optimizer=extra)
        with open(PATH, "rb") as f:
            raw = f.read()
        out.append(b"\x00" + raw)
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            members = [(info.filename[:-4] if info.filename.endswith(".npy") else info.filename,
                        z.read(info)) for info in z.infolist()]
        out.append(b"\x01" + _members_to_bytes(members))
        del buf
    os.unlink(PATH)
    return out


def one_input(data):
    if not data:
        return
    if data[0] & 1:
        with zipfile.ZipFile(PATH, "w", zipfile.ZIP_STORED) as z:
            for name, content in _bytes_to_members(data[1:]):
                if name.strip("/") and "\0" not in name:  # (what zipfile can store)
                    z.writestr(name + ".npy", content)
    else:
        with open(PATH, "wb") as f:
            f.write(data[1:])
    ck = load_checkpoint(PATH)
    size = os.path.getsize(PATH)
    held = sum(v.nbytes for v in ck.model.state_dict().values())
    assert held <= size, (held, size)


if __name__ == "__main__":
    try:
        _harness.main("load", seeds, one_input, (ValueError,),
                      modules=["cnncore.serialization", "cnncore.layers.*", "cnncore.zoo.*",
                               "cnncore.optim", "zipfile", "json.*", "numpy.lib.format",
                               "numpy.lib._format_impl", "numpy.lib._npyio_impl"])
    finally:
        if os.path.exists(PATH):
            os.unlink(PATH)

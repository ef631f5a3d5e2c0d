"""Save / load: round trips, optimiser state, errors on bad files, atomic writes, and a
model file stored in tests/data by an earlier version (must keep loading)."""

import json
import os

import numpy as np
import pytest

from cnncore import set_num_threads
from cnncore import serialization
from cnncore.layers import (BatchNorm1d, BatchNorm2d, Concat, Conv1d, Conv2d, Dropout, Flatten,
                            GlobalAvgPool2d, Identity, LeakyReLU, Linear, LocalResponseNorm,
                            MaxPool2d, ReLU, Residual, Sequential, Sigmoid, AvgPool2d)
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import SGD, Adam
from cnncore.serialization import load, load_checkpoint
from cnncore.trainer import Trainer

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.fixture(autouse=True)
def _one_thread():
    """The arrays here are tiny: extra threads only add synchronisation, which stalls badly
    on a busy machine (conftest restores the setting after each test)."""
    set_num_threads(1)


def rich_model(seed=0, dtype=np.float32):
    m = Sequential(
        Conv2d(2, 4, 3, padding="same"), BatchNorm2d(4), ReLU(),
        Residual([Conv2d(4, 4, 3, padding=1, bias=False), Sigmoid()]),
        Concat(Identity(), Conv2d(4, 2, 1)), LocalResponseNorm(3),
        MaxPool2d(2), AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        Residual(Conv2d(6, 6, 3, stride=2, padding=1), shortcut=Conv2d(6, 6, 1, stride=2)),
        LeakyReLU(0.2), GlobalAvgPool2d(), BatchNorm1d(6), Dropout(0.3), Linear(6, 3),
    ).initialize(seed)
    return m.astype(dtype)


def trained(model, rng, steps=3):
    x = rng.standard_normal((12, 2, 8, 8)).astype(model.dtype)
    y = rng.integers(0, 3, 12)
    opt = Adam(model.parameters(), lr=0.01)
    Trainer(model, SoftmaxCrossEntropy(), opt, seed=0).fit(x, y, epochs=steps, batch_size=6,
                                                            verbose=0)
    return opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_predicts_identically(tmp_path, rng, dtype):
    model = rich_model(dtype=dtype)
    trained(model, rng)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = load(path)
    assert repr(loaded) == repr(model)
    assert loaded.to_config() == model.to_config()
    assert not loaded.training
    x = rng.standard_normal((5, 2, 8, 8)).astype(dtype)
    expected = model.eval().forward(x)
    got = loaded.forward(x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)
    for (n1, a), (n2, b) in zip(model.named_buffers(), loaded.named_buffers()):
        assert n1 == n2
        np.testing.assert_array_equal(a, b)
    assert any(np.any(b != 0) for n, b in loaded.named_buffers() if "running_mean" in n)
    # Dropout generator state travels too: the same masks in training mode.
    model.train(), loaded.train()
    np.testing.assert_array_equal(model[12].forward(np.ones((4, 6), dtype)),
                                  loaded[12].forward(np.ones((4, 6), dtype)))


def test_conv1d_model_round_trip(tmp_path, rng):
    model = Sequential(Conv1d(3, 4, 3, stride=2, padding=1), ReLU(), Flatten(),
                       Linear(4 * 5, 2)).initialize(3)
    model.save(tmp_path / "c.npz")
    x = rng.standard_normal((2, 3, 10)).astype(np.float32)
    np.testing.assert_array_equal(load(tmp_path / "c.npz").forward(x), model.forward(x))


def test_optimizer_state_saved_only_when_asked(tmp_path, rng):
    model = rich_model()
    opt = trained(model, rng)
    model.save(tmp_path / "plain.npz")
    assert load_checkpoint(tmp_path / "plain.npz").optimizer_state is None
    model.save(tmp_path / "with_opt.npz", optimizer=opt)
    ck = load_checkpoint(tmp_path / "with_opt.npz")
    assert ck.optimizer_config == {"class": "Adam", "config": opt.get_config()}
    state = opt.state_dict()
    assert set(ck.optimizer_state) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(ck.optimizer_state[k], v)
    assert int(ck.optimizer_state["step"]) == 6
    with np.load(tmp_path / "with_opt.npz", allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)


def _rewrite(src, dst, **changes):
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(dst, **arrays)


def test_newer_format_version_is_refused(tmp_path):
    rich_model().save(tmp_path / "m.npz")
    _rewrite(tmp_path / "m.npz", tmp_path / "new.npz",
             __version__=np.array(serialization.FORMAT_VERSION + 1))
    with pytest.raises(ValueError) as e:
        load(tmp_path / "new.npz")
    assert str(tmp_path / "new.npz") in str(e.value)
    assert "newer" in str(e.value) and "upgrade" in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "npy", "empty"])
def test_corrupt_files_give_clear_value_errors(tmp_path, damage):
    path = tmp_path / "bad.npz"
    rich_model().save(path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a zip archive at all" * 10)
    elif damage == "npy":
        with open(path, "wb") as f:
            np.save(f, np.arange(3))
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        load(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("change, match", [
    ({"param/0.weight": None}, "missing.*0.weight"),
    ({"param/0.weight": np.zeros((1, 1), np.float32)}, "0.weight.*shape"),
    ({"__architecture__": np.array("{not json")}, "not valid JSON"),
    ({"__architecture__": np.array(json.dumps({"class": "NoSuchLayer", "config": {}}))},
     "unknown layer class"),
    ({"__format__": None}, "not a cnncore model file"),
    ({"param/0.weight": np.array([object()], dtype=object)}, "pickle|Object arrays"),
])
def test_inconsistent_files_are_refused(tmp_path, change, match):
    rich_model().save(tmp_path / "m.npz")
    bad = tmp_path / "bad.npz"
    _rewrite(tmp_path / "m.npz", bad, **change)
    with pytest.raises(ValueError, match=match) as e:
        load(bad)
    assert str(bad) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.npz")


def _boom(file, *args, **kwargs):
    file.write(b"PK\x03\x04 partial zip")
    raise OSError("disk full (simulated)")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    model = rich_model()
    monkeypatch.setattr(np, "savez", _boom)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch, rng):
    model = rich_model()
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    trained(model, rng, steps=1)
    monkeypatch.setattr(np, "savez", _boom)
    with pytest.raises(OSError):
        model.save(path)
    assert os.listdir(tmp_path) == ["m.npz"]
    assert path.read_bytes() == before
    load(path)  # still a valid file


def test_checkpoint_callback_write_failure_is_atomic(tmp_path, monkeypatch, rng):
    from cnncore.callbacks import ModelCheckpoint
    model = Sequential(Flatten(), Linear(4, 2)).initialize(0)
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), seed=0)
    x, y = rng.standard_normal((8, 2, 2)).astype(np.float32), rng.integers(0, 2, 8)
    monkeypatch.setattr(np, "savez", _boom)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(x, y, epochs=1, callbacks=[ModelCheckpoint(tmp_path / "ck.npz")], verbose=0)
    assert os.listdir(tmp_path) == []


def test_stored_model_from_tests_data_still_loads_and_predicts():
    """tests/data/small_model.npz was written once by tools/make_test_model.py; if this fails,
    old model files no longer load or compute the same (do not regenerate the file)."""
    ck = load_checkpoint(os.path.join(DATA, "small_model.npz"))
    with np.load(os.path.join(DATA, "small_model_io.npz"), allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    assert ck.format_version == 1
    model = ck.model
    assert model.input_shape == (1, 8, 8)
    assert model.output_shape(model.input_shape) == (3,)
    out = model.predict(x)
    assert out.shape == y.shape == (5, 3)
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-5)
    assert ck.optimizer_config["class"] == "Adam"
    opt = Adam(model.parameters())
    opt.load_state_dict(ck.optimizer_state)
    assert opt.step_count == 8 and opt.lr == pytest.approx(0.01)
    assert model.summary(print_fn=None).count("(None,") >= 13

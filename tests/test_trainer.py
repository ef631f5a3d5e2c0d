"""Trainer, optimisers, schedules and callbacks: learning, determinism, resume, NaN
detection, early stopping, logging, examples."""

import csv
import json
import math
import os

import numpy as np
import pytest

from cnncore import memory_pool, set_num_threads
from cnncore.memory import pool_active
from cnncore import trainer as trainer_module
from cnncore.callbacks import (Callback, CSVLogger, EarlyStopping, JSONLogger,
                               LearningRateScheduler, ModelCheckpoint)
from cnncore.layers import (BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Parameter,
                            ReLU, Sequential)
from cnncore.losses import MSE, SoftmaxCrossEntropy
from cnncore.optim import (SGD, Adam, AdamW, ConstantLR, CosineLR, StepLR, WarmupLR,
                           optimizer_from_config, schedule_from_config)
from cnncore.trainer import Trainer, TrainingDiverged


@pytest.fixture(autouse=True)
def _one_thread():
    """The arrays here are tiny: extra threads only add synchronisation, which stalls badly
    on a busy machine (conftest restores the setting after each test)."""
    set_num_threads(1)


def toy_data(n=96, seed=0):
    """4 classes of 1x8x8 images: a bright quadrant per class, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32) * 0.5
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.5
    return x, y


def toy_model(seed=0, dropout=0.2):
    return Sequential(Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2d(2),
                      Flatten(), Dropout(dropout), Linear(64, 4)).initialize(seed)


def make_trainer(seed=0, lr=0.01, opt=Adam):
    model = toy_model(seed)
    return Trainer(model, SoftmaxCrossEntropy(), opt(model.parameters(), lr=lr))


def weights(model):
    return [p.data.copy() for p in model.parameters()] + [b.copy() for _, b in model.named_buffers()]


def assert_bit_identical(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


# ----------------------------------------------------------------------------- learning

def test_digits_example_reaches_90_percent(capsys):
    pytest.importorskip("sklearn")
    from cnncore.examples import digits
    acc = digits.main(["--epochs", "8", "--quiet"])
    out = capsys.readouterr().out
    assert acc > 0.90
    assert f"test accuracy: {acc:.4f}" in out


def test_fit_history_evaluate_predict():
    x, y = toy_data()
    t = make_trainer(lr=0.03)
    h = t.fit(x[:64], y[:64], epochs=3, batch_size=16, validation_data=(x[64:], y[64:]),
              seed=0, verbose=0)
    assert h.epoch == [1, 2, 3] and t.epoch == 3 and t.global_step == 12
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                "images_per_sec"):
        assert len(h[key]) == 3
    assert h["loss"][-1] < h["loss"][0]
    assert all(s > 0 for s in h["seconds"]) and all(r > 0 for r in h["images_per_sec"])
    res = t.evaluate(x[64:], y[64:], batch_size=7)
    assert res["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-5)
    logits = t.predict(x[64:], batch_size=5)
    assert logits.shape == (32, 4)
    assert res["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y[64:]))
    assert res["accuracy"] > 0.8


def test_mse_with_one_hot_targets_learns():
    x, y = toy_data()
    model = Sequential(Flatten(), Linear(64, 4)).initialize(0)
    t = Trainer(model, MSE(), SGD(model.parameters(), lr=0.01, momentum=0.9))
    h = t.fit(x, np.eye(4, dtype=np.float32)[y], epochs=6, batch_size=16, seed=0, verbose=0)
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    assert h["accuracy"][-1] > 0.8


# ----------------------------------------------------------------------------- determinism

def test_same_seed_bit_identical_different_seed_differs():
    x, y = toy_data()
    runs = []
    for fit_seed in (0, 0, 1):
        t = make_trainer(seed=5)
        t.fit(x, y, epochs=2, batch_size=16, seed=fit_seed, verbose=0)
        runs.append(weights(t.model))
    assert_bit_identical(runs[0], runs[1])
    assert any(not np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


class _AllocatorSpy(Callback):
    def __init__(self):
        self.pooled = []

    def on_batch_end(self, trainer, batch, logs):
        self.pooled.append(pool_active())


@pytest.mark.parametrize("pool", [True, False])
def test_fit_runs_inside_a_memory_pool_unless_disabled(pool):
    x, y = toy_data(32)
    model = toy_model(3)
    t = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.01),
                memory_pool=pool)
    spy = _AllocatorSpy()
    t.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[spy])
    assert spy.pooled == [pool] * 2
    assert not pool_active()


def test_memory_pool_does_not_change_results():
    x, y = toy_data()
    runs, pools = [], []
    for pool in (False, True, memory_pool(max_bytes=0)):
        model = toy_model(5)
        t = Trainer(model, SoftmaxCrossEntropy(), Adam(model.parameters(), lr=0.01),
                    memory_pool=pool)
        t.fit(x, y, epochs=2, batch_size=16, seed=0, verbose=0)
        runs.append(weights(t.model))
        pools.append(pool)
    assert_bit_identical(runs[0], runs[1])
    assert_bit_identical(runs[0], runs[2])
    assert pools[2].stats()["releases"] > 0  # max_bytes=0: nothing was ever cached


def test_evaluate_and_predict_run_inside_a_memory_pool():
    x, y = toy_data(32)
    t = make_trainer(seed=2)
    seen = []
    forward = t.model.forward

    def spy(xb):
        seen.append(pool_active())
        return forward(xb)

    t.model.forward = spy
    t.evaluate(x, y, batch_size=16)
    t.model.predict(x[:4])  # the model alone: NumPy's allocator
    t.predict(x, batch_size=16)
    assert seen == [True, True, False, True, True]
    assert not pool_active()


def test_fit_inside_a_users_pool_uses_that_pool():
    x, y = toy_data(64)
    t = make_trainer(seed=2)
    with memory_pool(min_bytes=0) as pool:
        t.fit(x, y, epochs=1, batch_size=16, verbose=0)
        assert pool.stats()["hits"] > 0  # no nested pool took the allocations


def test_memory_pool_argument_is_checked():
    model = toy_model()
    with pytest.raises(TypeError, match="memory_pool must be True, False or a"):
        Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), memory_pool=1)


def _scheduler():
    return LearningRateScheduler(WarmupLR(2, CosineLR(0.02, total=10)), per="batch")


def _noise(xb, rng):
    return xb + rng.normal(0.0, 0.1, xb.shape).astype(xb.dtype)


@pytest.mark.parametrize("how", ["from_checkpoint", "load_checkpoint"])
def test_resume_equals_uninterrupted(tmp_path, how):
    x, y = toy_data()
    full = make_trainer(seed=3)
    full.fit(x, y, epochs=2, batch_size=20, seed=7, callbacks=[_scheduler()], verbose=0,
             transform=_noise)

    first = make_trainer(seed=3)
    ck = ModelCheckpoint(tmp_path / "ck-{epoch}.npz")
    first.fit(x, y, epochs=1, batch_size=20, seed=7, callbacks=[_scheduler(), ck], verbose=0,
              transform=_noise)
    assert ck.last_path == str(tmp_path / "ck-1.npz")
    if how == "from_checkpoint":
        resumed = Trainer.from_checkpoint(ck.last_path)
    else:
        resumed = make_trainer(seed=99, lr=0.5)  # different weights and lr, overwritten
        resumed.load_checkpoint(ck.last_path)
    assert resumed.epoch == 1 and resumed.global_step == 5
    h = resumed.fit(x, y, epochs=1, batch_size=20, callbacks=[_scheduler()], verbose=0,
                    transform=_noise)
    assert h.epoch == [2]
    assert resumed.global_step == full.global_step == 10
    assert_bit_identical(weights(resumed.model), weights(full.model))
    assert_bit_identical(list(resumed.optimizer.state_dict().values()),
                         list(full.optimizer.state_dict().values()))


def test_transform_applies_to_training_batches_only():
    x, y = toy_data(40)
    calls = []

    def tf(xb, rng):
        calls.append(len(xb))
        assert isinstance(rng, np.random.Generator)
        return np.zeros_like(xb)  # the model sees only blank images

    t = make_trainer(lr=0.05)
    h = t.fit(x, y, epochs=2, batch_size=16, seed=0, validation_data=(x, y), transform=tf,
              verbose=0)
    assert calls == [16, 16, 8] * 2
    # On blank images no model beats the majority class (at most half of 4 balanced-ish classes).
    assert h["accuracy"][-1] <= max(np.bincount(y)) / len(y) + 1e-9


def test_plain_model_file_is_not_a_checkpoint(tmp_path):
    t = make_trainer()
    t.model.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        Trainer.from_checkpoint(tmp_path / "m.npz")


# ----------------------------------------------------------------------------- failures

def test_nan_loss_raises_naming_epoch_and_batch():
    x, y = toy_data(64)
    x[40, 0, 0, 0] = np.nan  # batch 3 of 4 with batch_size 16, no shuffling
    t = make_trainer()
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 3/4") as e:
        t.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert isinstance(e.value, FloatingPointError) and isinstance(e.value, RuntimeError)
    assert "nan" in str(e.value)
    assert t.global_step == 2


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_with_huge_learning_rate():
    x, y = toy_data(64)
    model = Sequential(Flatten(), Linear(64, 4)).initialize(0)
    t = Trainer(model, MSE(), SGD(model.parameters(), lr=1e6))
    with pytest.raises(TrainingDiverged, match=r"epoch \d+, batch \d+/4"):
        t.fit(x, np.eye(4, dtype=np.float32)[y], epochs=50, batch_size=16, seed=0, verbose=0)


def test_input_checks():
    x, y = toy_data(16)
    t = make_trainer()
    with pytest.raises(TypeError, match=r"uint8.*astype\(np.float32\)"):
        t.fit((x * 50).astype(np.uint8), y, verbose=0)
    with pytest.raises(ValueError, match="16 samples but y has 15"):
        t.fit(x, y[:15], verbose=0)
    with pytest.raises(TypeError, match="class labels must be integers"):
        t.fit(x, y.astype(np.float32), verbose=0)
    h = t.fit(x.astype(np.float64), y, epochs=1, verbose=0)  # converted batch by batch
    assert len(h) == 1


# ----------------------------------------------------------------------------- callbacks

class _FakeScore(Callback):
    """Puts a scripted 'score' into the logs and remembers the weights of every epoch."""

    def __init__(self, scores):
        self.scores, self.saved = scores, []

    def on_epoch_end(self, trainer, epoch, logs):
        logs["score"] = self.scores[epoch]
        self.saved.append(weights(trainer.model))


def test_early_stopping_stops_and_restores_best():
    x, y = toy_data(32)
    t = make_trainer()
    fake = _FakeScore([1.0, 0.5, 0.7, 0.6, 0.9, 0.1, 0.1])
    es = EarlyStopping(monitor="score", patience=2, mode="min", restore_best_weights=True)
    h = t.fit(x, y, epochs=7, batch_size=16, seed=0, callbacks=[fake, es], verbose=0)
    assert len(h) == 4 and t.epoch == 4
    assert es.stopped_epoch == 4 and es.best_epoch == 2 and es.best == 0.5
    assert_bit_identical(weights(t.model)[:4], fake.saved[1][:4])


def test_early_stopping_patience_on_flat_loss():
    x, y = toy_data(32)
    model = toy_model(dropout=0.0)
    # lr 0, no dropout, no shuffling: the same loss every epoch, no improvement after epoch 1
    t = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.0))
    es = EarlyStopping(monitor="loss", patience=3)
    h = t.fit(x, y, epochs=20, batch_size=16, shuffle=False, callbacks=[es], verbose=0)
    assert h["loss"][1:] == [h["loss"][0]] * 3
    assert len(h) == 4 and es.stopped_epoch == 4


def test_early_stopping_unknown_metric():
    x, y = toy_data(16)
    with pytest.raises(ValueError, match="'val_loss' is not in the epoch logs"):
        make_trainer().fit(x, y, epochs=1, callbacks=[EarlyStopping()], verbose=0)


def test_model_checkpoint_save_best_only(tmp_path):
    x, y = toy_data(32)
    t = make_trainer()
    fake = _FakeScore([0.5, 0.7, 0.4])
    ck = ModelCheckpoint(tmp_path / "best-{epoch}.npz", monitor="score", save_best_only=True,
                         mode="min", save_optimizer=False)
    t.fit(x, y, epochs=3, batch_size=16, seed=0, callbacks=[fake, ck], verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["best-1.npz", "best-3.npz"]


def test_csv_and_json_loggers(tmp_path):
    x, y = toy_data(32)
    t = make_trainer()
    h = t.fit(x, y, epochs=3, batch_size=16, seed=0, validation_data=(x, y), verbose=0,
              callbacks=[CSVLogger(tmp_path / "log.csv"), JSONLogger(tmp_path / "log.jsonl")])
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(h["val_loss"])
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [d["epoch"] for d in lines] == [1, 2, 3]
    assert [d["loss"] for d in lines] == pytest.approx(h["loss"])


def test_learning_rate_scheduler_per_epoch_and_per_batch():
    x, y = toy_data(32)
    t = make_trainer(opt=SGD, lr=1.0)
    h = t.fit(x, y, epochs=4, batch_size=16, seed=0, verbose=0,
              callbacks=[LearningRateScheduler(StepLR(0.1, step_size=2, gamma=0.5))])
    assert h["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05])

    seen = []

    class Record(Callback):
        def on_batch_end(self, trainer, batch, logs):
            seen.append(trainer.optimizer.lr)

    t2 = make_trainer(opt=SGD, lr=1.0)
    t2.fit(x, y, epochs=2, batch_size=8, seed=0, verbose=0,
           callbacks=[LearningRateScheduler(CosineLR(0.4, total=8), per="batch"), Record()])
    expected = [0.2 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert seen == pytest.approx(expected)


def test_verbose_output(capsys, monkeypatch):
    x, y = toy_data(32)
    make_trainer().fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert capsys.readouterr() == ("", "")
    make_trainer().fit(x, y, epochs=2, batch_size=16, verbose=2)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "img/s" in out and "loss" in out
    monkeypatch.setattr(trainer_module, "_tqdm", lambda: None)  # plain-line progress
    make_trainer().fit(x, y, epochs=1, batch_size=16, verbose=1)
    err = capsys.readouterr().err
    assert "ETA" in err and "img/s" in err and "acc" in err


# ----------------------------------------------------------------------------- optimisers

def _param(value=1.0):
    p = Parameter(np.array([value]), "w")
    return p


def _steps(opt, p, grads):
    out = []
    for g in grads:
        p.grad[...] = g
        opt.step()
        out.append(float(p.data[0]))
    return out


def test_sgd_rules_by_hand():
    p = _param()
    assert _steps(SGD([p], lr=0.1), p, [2.0]) == pytest.approx([0.8])
    p = _param()
    # momentum 0.9: v1 = 2, w = 1 - 0.2; v2 = 0.9 * 2 + 2 = 3.8, w = 0.8 - 0.38
    assert _steps(SGD([p], lr=0.1, momentum=0.9), p, [2.0, 2.0]) == pytest.approx([0.8, 0.42])
    p = _param()
    # nesterov: d1 = 2 + 0.9 * 2 = 3.8
    assert _steps(SGD([p], lr=0.1, momentum=0.9, nesterov=True), p, [2.0]) == pytest.approx([0.62])
    p = _param()
    # weight decay 0.5: g = 2 + 0.5 * 1
    assert _steps(SGD([p], lr=0.1, weight_decay=0.5), p, [2.0]) == pytest.approx([0.75])


def _adam_by_hand(w, grads, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            w = w * (1 - lr * wd)
        elif wd:
            g = g + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
        out.append(w)
    return out


def test_adam_and_adamw_by_hand():
    grads = [2.0, -1.0, 0.5]
    p = _param()
    assert _steps(Adam([p], lr=0.1), p, grads) == pytest.approx(_adam_by_hand(1.0, grads, 0.1),
                                                                 rel=1e-12)
    p = _param()
    assert _steps(Adam([p], lr=0.1, weight_decay=0.1), p, grads) == pytest.approx(
        _adam_by_hand(1.0, grads, 0.1, wd=0.1), rel=1e-12)
    p = _param()
    assert _steps(AdamW([p], lr=0.1, weight_decay=0.1), p, grads) == pytest.approx(
        _adam_by_hand(1.0, grads, 0.1, wd=0.1, decoupled=True), rel=1e-12)
    p = _param()
    first = _steps(Adam([p], lr=0.1), p, [123.0])[0]
    assert first == pytest.approx(0.9, rel=1e-7)  # the first step is lr * sign(grad)


@pytest.mark.parametrize("cls, kwargs", [(SGD, dict(momentum=0.9, nesterov=True)),
                                         (Adam, {}), (AdamW, dict(weight_decay=0.05))])
def test_optimizer_state_dict_round_trip(cls, kwargs, rng):
    params_a = [Parameter(rng.standard_normal((3, 2)), "w"), Parameter(rng.standard_normal(2), "b")]
    params_b = [Parameter(p.data.copy(), p.name) for p in params_a]
    a = cls(params_a, lr=0.05, **kwargs)
    grads = [[rng.standard_normal(p.shape) for p in params_a] for _ in range(5)]
    for gs in grads[:3]:
        for p, g in zip(params_a, gs):
            p.grad[...] = g
        a.step()
    for p, q in zip(params_a, params_b):
        q.data[...] = p.data
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = optimizer_from_config(json.loads(json.dumps(a.to_config())), params_b)
    b.load_state_dict(state)
    for gs in grads[3:]:
        for p, q, g in zip(params_a, params_b, gs):
            p.grad[...] = g
            q.grad[...] = g
        a.step()
        b.step()
    for p, q in zip(params_a, params_b):
        np.testing.assert_array_equal(p.data, q.data)
    bad = dict(state)
    key = next(k for k in bad if k.endswith(".0"))
    bad[key] = np.zeros((5, 5))
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict(bad)


def test_schedules_by_hand():
    cos = CosineLR(1.0, total=10, min_lr=0.1)
    assert cos(0) == pytest.approx(1.0)
    assert cos(5) == pytest.approx(0.55)
    assert cos(10) == pytest.approx(0.1) and cos(20) == pytest.approx(0.1)
    step = StepLR(0.1, step_size=3, gamma=0.1)
    assert [step(t) for t in (0, 2, 3, 6)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    warm = WarmupLR(3, CosineLR(0.8, total=4))
    assert [warm(t) for t in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8,
                                                         0.4 * (1 + math.cos(math.pi / 4))])
    assert WarmupLR(2, 0.3)(5) == pytest.approx(0.3)
    assert ConstantLR(0.5)(100) == 0.5
    again = schedule_from_config(json.loads(json.dumps(warm.to_config())))
    assert [again(t) for t in range(8)] == [warm(t) for t in range(8)]
    with pytest.raises(ValueError):
        cos(-1)


# ----------------------------------------------------------------------------- examples

def test_mnist_example_on_fake_data(tmp_path, monkeypatch, capsys):
    """The script's plumbing (options, conversion, save, curves, final line) on tiny
    synthetic data standing in for MNIST."""
    import cnncore.datasets
    from cnncore import serialization
    from cnncore.examples import mnist

    rng = np.random.default_rng(0)

    def fake_load_mnist(path=None):
        assert path == "somewhere"
        return ((rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, 200).astype(np.uint8)),
                (rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, 50).astype(np.uint8)))

    monkeypatch.setattr(cnncore.datasets, "load_mnist", fake_load_mnist)
    acc = mnist.main(["--epochs", "1", "--subset", "64", "--batch-size", "32", "--data",
                      "somewhere", "--out", str(tmp_path), "--threads", "1", "--quiet"])
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == f"test accuracy: {acc:.4f}"
    assert "seconds per epoch" in out and "64 training" in out and "Total params: 61,706" in out
    model = serialization.load(tmp_path / "lenet5_mnist.npz")
    assert model.num_parameters() == 61706
    assert (tmp_path / "lenet5_mnist_curves.png").exists() or "matplotlib is not" in out


def test_mnist_random_shift_moves_each_image_by_at_most_max_shift():
    from cnncore.examples.mnist import random_shift

    x = np.full((50, 1, 28, 28), -1.0, np.float32)
    x[:, 0, 14, 14] = 5.0  # one bright pixel in the middle
    out = random_shift(2, np.float32(-1.0))(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    rows, cols = np.nonzero(out[:, 0] == 5.0)[1:]
    assert len(rows) == 50  # the pixel is still there, once per image
    assert np.all(np.abs(rows - 14) <= 2) and np.all(np.abs(cols - 14) <= 2)
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # and it moved around
    assert np.count_nonzero(out == -1.0) == 50 * (28 * 28 - 1)

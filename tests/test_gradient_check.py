"""``Trainer(check_gradients=...)``: a NaN or infinite gradient with a finite loss raises
before the optimiser step (weights and checkpoint untouched), or warns and skips the step,
or goes through when the check is off. (The 2-rank case is in test_distributed.py.)"""

import warnings

import numpy as np
import pytest

from cnncore import set_num_threads
from cnncore._gradients import describe, nonfinite
from cnncore.callbacks import Callback, ModelCheckpoint
from cnncore.layers import Conv2d, Flatten, Linear, MaxPool2d, Parameter, ReLU, Sequential
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import SGD, Adam
from cnncore.serialization import load_checkpoint
from cnncore.trainer import Trainer, TrainingDiverged

N, BATCH = 64, 16  # 4 steps per epoch


@pytest.fixture(autouse=True)
def _one_thread():
    set_num_threads(1)


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 1, 8, 8)).astype(np.float32)
    return x, rng.integers(0, 4, N)


def new_trainer(check="raise"):
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(64, 4)).initialize(0)
    return Trainer(model, SoftmaxCrossEntropy(), Adam(model.parameters(), lr=1e-2), seed=0,
                   check_gradients=check)


def inject(trainer, at_batch, value=np.nan):
    """From now on, the ``at_batch``-th backward pass (1-based, counted over every batch)
    leaves ``value`` in two entries of the Linear layer's weight gradient; the loss stays
    finite."""
    layer = trainer.model.named_layers()[-1][1]
    assert isinstance(layer, Linear)
    backward, seen = layer.backward, []

    def poisoned(grad_out):
        out = backward(grad_out)
        seen.append(1)
        if len(seen) == at_batch:
            layer.weight.grad[0, :2] = value
        return out
    layer.backward = poisoned


class Snapshots(Callback):
    """Weights after every step (keyed by global_step) and the checkpoint's bytes after every
    epoch."""

    def __init__(self, ckpt=None):
        self.ckpt, self.after, self.file = ckpt, {}, None

    def on_batch_end(self, trainer, batch, logs):
        self.after[trainer.global_step] = {k: v.copy()
                                           for k, v in trainer.model.state_dict().items()}

    def on_epoch_end(self, trainer, epoch, logs):
        if self.ckpt is not None:
            with open(self.ckpt, "rb") as f:
                self.file = f.read()


def assert_same_weights(got, want):
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_raise_names_the_parameter_and_step_before_the_update(tmp_path, value):
    x, y = data()
    t = new_trainer()
    inject(t, at_batch=6, value=value)  # epoch 2, batch 2
    ckpt = tmp_path / "ckpt.npz"
    snap = Snapshots(ckpt)
    with pytest.raises(TrainingDiverged) as info:
        t.fit(x, y, epochs=3, batch_size=BATCH, verbose=0,
              callbacks=[ModelCheckpoint(str(ckpt)), snap])
    msg = str(info.value)
    assert isinstance(info.value, FloatingPointError)
    assert "non-finite gradient at epoch 2, batch 2/4 (step 6)" in msg, msg
    assert "'4.weight' (Linear) has 2 non-finite values of 256" in msg, msg
    assert "'4.bias'" not in msg and "weights are those after step 5" in msg, msg
    # the step was not taken: the weights are those after step 5, the checkpoint is epoch 1's
    assert t.global_step == 5 and t.epoch == 1
    assert_same_weights(t.model.state_dict(), snap.after[5])
    assert ckpt.read_bytes() == snap.file
    assert load_checkpoint(ckpt).trainer_state["global_step"] == 4


def test_warn_skips_the_step_and_goes_on():
    x, y = data()
    t = new_trainer("warn")
    inject(t, at_batch=6)
    with pytest.warns(RuntimeWarning, match=r"non-finite gradient at epoch 2, batch 2/4 "
                                            r"\(step 6\): '4.weight' \(Linear\).*step skipped"):
        t.fit(x, y, epochs=3, batch_size=BATCH, verbose=0)
    assert t.skipped_steps == 1 and t.global_step == 11 and t.epoch == 3
    assert all(np.isfinite(v).all() for v in t.model.state_dict().values())
    # the same as a run whose optimiser skips its 6th step (no NaN anywhere)
    ref = new_trainer("warn")
    step, calls = ref.optimizer.step, []

    def skip_sixth():
        calls.append(1)
        if len(calls) != 6:
            step()
    ref.optimizer.step = skip_sixth
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref.fit(x, y, epochs=3, batch_size=BATCH, verbose=0)
    assert_same_weights(t.model.state_dict(), ref.model.state_dict())
    # skipped_steps travels with checkpoints
    assert t.state_dict()["skipped_steps"] == 1
    t2 = new_trainer()
    t2.load_state_dict(t.state_dict())
    assert t2.skipped_steps == 1


@pytest.mark.parametrize("off", ["off", None])
def test_off_lets_the_nan_through(off):
    x, y = data()
    t = new_trainer(off)
    inject(t, at_batch=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TrainingDiverged, match=r"loss is nan .*\(step 7\)"):
            t.fit(x, y, epochs=3, batch_size=BATCH, verbose=0)
    assert t.global_step == 6  # the poisoned step was taken
    assert np.isnan(t.model.state_dict()["4.weight"]).any()


@pytest.mark.parametrize("bad", ["on", "Raise", True, False, 0, "none"])
def test_invalid_option(bad):
    with pytest.raises(ValueError, match=r"check_gradients must be 'raise', 'warn', 'off' or "
                                         r"None, got " + repr(bad)):
        new_trainer(bad)


def test_nonfinite_sum_overflow_is_not_an_error():
    p = Parameter(np.zeros(1000, np.float32), "weight")
    p.grad[:] = 3e38  # finite, but the float32 sum overflows to inf
    with np.errstate(over="ignore"):
        assert not np.isfinite(p.grad.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and NumPy's overflow warning is not let out
        assert not nonfinite([p])
        p.grad[7] = np.inf
        assert nonfinite([p])
        p.grad[7] = np.nan
        assert nonfinite([p])
        p.grad[:] = -3e38
        p.grad[:500] = 3e38  # partial sums overflow both ways: still finite values
        assert not nonfinite([p])


def test_huge_finite_gradients_train_without_a_warning():
    x, y = data()
    t = new_trainer()
    t.optimizer = SGD(t.model.parameters(), lr=1e-39)  # (Adam would overflow squaring)
    layer = t.model.named_layers()[-1][1]
    backward = layer.backward

    def huge(grad_out):
        out = backward(grad_out)
        layer.weight.grad[...] = 3e38  # finite; its sum overflows float32
        return out
    layer.backward = huge
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    assert t.global_step == 4 and t.skipped_steps == 0


def test_describe_lists_the_last_layer_first_and_limits_the_list():
    model = Sequential(*[Linear(2, 2) for _ in range(6)]).initialize(0)
    params = model.parameters()
    for p in params:
        p.grad[...] = np.nan
    text = describe(model, params)
    assert text.startswith("'5.bias' (Linear) has 2 non-finite values of 2, '5.weight' "
                           "(Linear) has 4 non-finite values of 4"), text
    assert text.endswith(" and 8 more parameters"), text
    stray = Parameter(np.zeros(3), "w")  # optimised, not part of the model
    stray.grad[1] = np.inf
    assert describe(model, [stray]) == ("'optimiser parameter 0 (w)' has 1 non-finite value "
                                        "of 3")

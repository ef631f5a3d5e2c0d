"""Ctrl-C during ``Trainer.fit`` (issue 12, part 4): the first SIGINT stops training after the
current step, a partial epoch leaves the last checkpoint alone, a save is never cut short,
the SIGINT handler is restored, a user's own handler and other threads are left alone.

The in-process tests raise SIGINT from a callback (``signal.raise_signal``); the subprocess
tests send it to ``_kill_worker.py`` at random moments and resume from the checkpoint, which
must reach the uninterrupted run's weights bit for bit (a few trials here; ``pytest -m fuzz``
runs 24).
"""

import os
import random
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from cnncore import serialization, set_num_threads
from cnncore import _interrupt
from cnncore.callbacks import Callback, ModelCheckpoint
from cnncore.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import Adam
from cnncore.serialization import load_checkpoint
from cnncore.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_kill_worker.py")

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

N, BATCH = 64, 16  # 4 steps per epoch


@pytest.fixture(autouse=True)
def _one_thread():
    set_num_threads(1)


@pytest.fixture(autouse=True)
def _default_sigint():
    """Every test starts and must end with Python's default SIGINT handler. A process
    started in the background (nohup, ``&`` in a script, some CI runners) inherits SIGINT
    ignored, and Python then installs no handler: the tests set the default one, as an
    interactive session has it, and put the inherited disposition back afterwards."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
        handler = signal.getsignal(signal.SIGINT)
        assert handler is signal.default_int_handler, "fit left its SIGINT handler installed"
    finally:
        signal.signal(signal.SIGINT, inherited)


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 1, 8, 8)).astype(np.float32)
    return x, rng.integers(0, 4, N)


def new_trainer():
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(64, 4)).initialize(0)
    return Trainer(model, SoftmaxCrossEntropy(), Adam(model.parameters(), lr=1e-2), seed=0)


def weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_same_weights(got, want):
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


class Recorder(Callback):
    """Records the hooks called; raises SIGINT ``times`` times after batch ``at`` =
    (0-based epoch, batch) and notes whether the code after the signal ran."""

    def __init__(self, at=None, times=1):
        self.at, self.times = at, times
        self.events = []
        self.after_signal = False

    def on_batch_end(self, trainer, batch, logs):
        self.events.append(("batch", trainer.epoch, batch))
        if (trainer.epoch, batch) == self.at:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)
            self.after_signal = True

    def on_epoch_end(self, trainer, epoch, logs):
        self.events.append(("epoch_end", epoch))

    def on_train_end(self, trainer, logs):
        self.events.append(("train_end",))


def count_steps(trainer):
    calls = []
    step = trainer.optimizer.step

    def counted():
        calls.append(1)
        step()
    trainer.optimizer.step = counted
    return calls


# ---------------------------------------------------------------------- in process
def test_ctrl_c_mid_epoch_stops_after_the_step_and_keeps_the_checkpoint(tmp_path, capsys):
    x, y = data()
    t = new_trainer()
    steps = count_steps(t)
    rec = Recorder(at=(1, 1))  # the second batch of the second epoch: step 6
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt) as info:
        t.fit(x, y, epochs=3, batch_size=BATCH, verbose=0,
              callbacks=[ModelCheckpoint(str(ckpt)), rec])
    msg = str(info.value)
    assert "stopped by Ctrl-C after step 6 (epoch 2, batch 2/4)" in msg, msg
    assert "1 complete epoch: checkpoints saved at epoch ends go up to epoch 1" in msg, msg
    assert len(steps) == 6 and t.global_step == 6 and t.epoch == 1
    assert t.interrupted is True and rec.after_signal
    # no epoch end for the partial epoch; on_train_end ran (loggers close their files)
    assert [e for e in rec.events if e[0] != "batch"] == [("epoch_end", 0), ("train_end",)]
    assert rec.events[-2] == ("batch", 1, 1)
    assert capsys.readouterr().err.count("cnncore: interrupted; stopping after the current "
                                         "step (press Ctrl-C again to stop at once)") == 1
    # the checkpoint on disk is the one of epoch 1: resuming from it is exact
    ck = load_checkpoint(ckpt)
    assert ck.trainer_state["epoch"] == 1 and ck.trainer_state["global_step"] == 4
    resumed = Trainer.from_checkpoint(ckpt)
    resumed.fit(x, y, epochs=2, batch_size=BATCH, verbose=0)
    straight = new_trainer()
    straight.fit(x, y, epochs=3, batch_size=BATCH, verbose=0)
    assert_same_weights(weights(resumed.model), weights(straight.model))
    assert resumed.interrupted is False
    # the same trainer goes on when asked: a new fit clears the flag
    t.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    assert t.interrupted is False and t.epoch == 2 and t.global_step == 10


def test_ctrl_c_in_the_last_step_of_an_epoch_finishes_the_epoch(tmp_path):
    x, y = data()
    t = new_trainer()
    rec = Recorder(at=(0, 3))
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt, match=r"after step 4 \(at the end of epoch 1\)"):
        t.fit(x, y, epochs=3, batch_size=BATCH, verbose=0,
              callbacks=[ModelCheckpoint(str(ckpt)), rec])
    assert t.epoch == 1 and t.global_step == 4 and t.interrupted
    assert [e for e in rec.events if e[0] != "batch"] == [("epoch_end", 0), ("train_end",)]
    ck = load_checkpoint(ckpt)
    assert ck.trainer_state["epoch"] == 1 and ck.trainer_state["global_step"] == 4
    assert_same_weights(ck.model.state_dict(), weights(t.model))


def test_second_ctrl_c_raises_at_once():
    x, y = data()
    t = new_trainer()
    rec = Recorder(at=(0, 1), times=2)
    with pytest.raises(KeyboardInterrupt) as info:
        t.fit(x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=[rec])
    assert "stopped by Ctrl-C" not in str(info.value)  # Python's own, from the callback
    assert not rec.after_signal  # raised inside the callback, at the second signal
    assert ("train_end",) not in rec.events
    assert t.global_step == 2 and t.epoch == 0 and t.interrupted is True


def test_ctrl_c_during_a_checkpoint_save_lets_the_save_finish(tmp_path, monkeypatch):
    """SIGINT in the middle of ModelCheckpoint's save (inside np.savez): the file is written
    whole, then fit stops; no temporary file is left."""
    x, y = data()
    t = new_trainer()
    real_savez = np.savez
    calls = []

    def savez_with_ctrl_c(f, **arrays):
        calls.append(1)
        signal.raise_signal(signal.SIGINT)
        real_savez(f, **arrays)

    monkeypatch.setattr(serialization.np, "savez", savez_with_ctrl_c)
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt, match=r"after step 4 \(at the end of epoch 1\)"):
        t.fit(x, y, epochs=3, batch_size=BATCH, verbose=0,
              callbacks=[ModelCheckpoint(str(ckpt))])
    assert len(calls) == 1 and t.epoch == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
    ck = load_checkpoint(ckpt)
    assert ck.trainer_state["epoch"] == 1
    assert_same_weights(ck.model.state_dict(), weights(t.model))


def test_ctrl_c_during_validation_finishes_the_epoch(tmp_path):
    x, y = data()
    t = new_trainer()

    class CtrlCInEvaluate(Callback):
        def on_epoch_begin(self, trainer, epoch):
            evaluate = Trainer.evaluate

            def interrupted_evaluate(*args, **kwargs):
                signal.raise_signal(signal.SIGINT)
                return evaluate(trainer, *args, **kwargs)
            trainer.evaluate = interrupted_evaluate

    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt, match="at the end of epoch 1"):
        t.fit(x, y, epochs=3, batch_size=BATCH, verbose=0, validation_data=(x[:8], y[:8]),
              callbacks=[CtrlCInEvaluate(), ModelCheckpoint(str(ckpt))])
    assert load_checkpoint(ckpt).trainer_state["epoch"] == 1


@pytest.mark.parametrize("kind", ["function", "ignore"])
def test_a_users_sigint_handler_is_left_alone(kind):
    calls = []

    def mine(signum, frame):
        calls.append(signum)

    handler = mine if kind == "function" else signal.SIG_IGN
    signal.signal(signal.SIGINT, handler)
    try:
        x, y = data()
        t = new_trainer()
        rec = Recorder(at=(0, 1))
        t.fit(x, y, epochs=2, batch_size=BATCH, verbose=0, callbacks=[rec])
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert t.global_step == 8 and t.epoch == 2 and t.interrupted is False
    assert calls == ([signal.SIGINT] if kind == "function" else [])


def test_fit_in_another_thread_does_not_touch_signals(monkeypatch):
    touched = []
    real_signal = signal.signal

    def spy(signum, handler):
        touched.append(signum)
        return real_signal(signum, handler)

    monkeypatch.setattr(_interrupt.signal, "signal", spy)
    x, y = data()
    t = new_trainer()
    errors = []

    def work():
        try:
            t.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(120)
    assert not thread.is_alive() and errors == [] and t.global_step == 4
    assert touched == []
    # the main thread, for contrast: installs and restores
    t.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    assert touched == [signal.SIGINT, signal.SIGINT]


def test_handler_restored_when_fit_fails():
    x, y = data()
    t = new_trainer()

    class Boom(Callback):
        def on_batch_end(self, trainer, batch, logs):
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        t.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[Boom()])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert t.interrupted is False


def test_guard_disabled_does_nothing():
    """What the Trainer uses in distributed mode (the MPI test checks the Trainer)."""
    with _interrupt.SigintGuard(enabled=False) as guard:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not guard.installed and not guard.requested


# ---------------------------------------------------------------------- subprocess trials
def _worker_env():
    env = dict(os.environ, CNNCORE_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(
        serialization.__file__)), env.get("PYTHONPATH")] if p)
    return env


def _temp_files(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("ckpt.npz.tmp"))


def _sigint_trials(tmp_path, waits, pause=0.0, jitter=0.0, seed=0, batches=4):
    """For each ``k`` of ``waits``: start the worker (resuming from the checkpoint), read
    ``k`` of its ``step`` lines, wait up to ``jitter`` seconds, send SIGINT; check how it
    stopped and what it left. With ``pause`` (the worker sleeps after each step line) the
    signal lands between two steps: the worker must stop right after the step it printed
    last. Returns how many stops were mid-epoch and how many at an epoch's end."""
    sys.path.insert(0, HERE)
    try:
        import _kill_worker
    finally:
        sys.path.remove(HERE)
    env, rnd = _worker_env(), random.Random(seed)
    ckpt = tmp_path / "ckpt.npz"
    last_epoch, stats = 0, {"mid_epoch": 0, "epoch_end": 0}
    for k in waits:
        p = subprocess.Popen([sys.executable, WORKER, str(tmp_path), str(10**6),
                              "--batches", str(batches), "--print-steps", "--pause",
                              str(pause)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             text=True)
        try:
            assert p.stdout.readline().startswith("ready")
            line = "step none"
            for _ in range(k):
                line = p.stdout.readline()
                assert line.startswith("step")
            if jitter:
                threading.Event().wait(rnd.uniform(0, jitter))
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode in (-signal.SIGINT, 130), (p.returncode, err)
        assert "Trainer.fit stopped by Ctrl-C" in err and "KeyboardInterrupt" in err, err
        assert "serialization.py" not in err and "atomic_savez" not in err, err
        assert err.count("cnncore: interrupted") == 1, err
        assert _temp_files(tmp_path) == []
        if pause and k:  # the signal landed during the pause after that step
            assert f"after step {line.split()[1]} (" in err, (line, err)
        complete = int(re.search(r"(\d+) complete epoch", err).group(1))
        stats["epoch_end" if "at the end of epoch" in err else "mid_epoch"] += 1
        if complete == 0:
            assert not ckpt.exists()
            continue
        ck = load_checkpoint(ckpt)  # the checkpoint of the last complete epoch
        assert ck.trainer_state["epoch"] == complete >= last_epoch
        assert ck.trainer_state["global_step"] == complete * batches
        last_epoch = complete
    # finish two epochs further without a signal; compare with an uninterrupted run
    epochs = last_epoch + 2
    out = subprocess.run([sys.executable, WORKER, str(tmp_path), str(epochs), "--batches",
                          str(batches)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "done", out.stderr
    resumed = load_checkpoint(ckpt)
    assert resumed.trainer_state["global_step"] == epochs * batches
    reference = _kill_worker.new_trainer()
    x, y = _kill_worker.data()
    reference.fit(x, y, epochs=epochs, batch_size=len(x) // batches, verbose=0)
    assert_same_weights(resumed.model.state_dict(), weights(reference.model))
    stats["epochs"] = epochs
    return stats


@posix_only
def test_sigint_to_a_training_process_stops_it_cleanly(tmp_path):
    """Signals between two steps: after the 2nd step (mid-epoch), after the 4th of the
    resumed run (the last of an epoch: its checkpoint is saved, then the worker stops);
    then one at a random moment of a step or a save."""
    stats = _sigint_trials(tmp_path, [2, 4], pause=0.5)
    assert stats == {"mid_epoch": 1, "epoch_end": 1, "epochs": stats["epochs"]}
    _sigint_trials(tmp_path, [3], jitter=0.01, seed=3)


@posix_only
@pytest.mark.fuzz
def test_sigint_trials_long(tmp_path):
    """The long profile: 24 Ctrl-Cs at random moments (``pytest -m fuzz``)."""
    rnd = random.Random(12)
    stats = _sigint_trials(tmp_path, [rnd.randrange(0, 9) for _ in range(24)], jitter=0.01,
                           seed=12)
    print("SIGINT trials:", stats)
    assert stats["mid_epoch"] > 0 and stats["epoch_end"] > 0

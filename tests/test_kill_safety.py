"""Kill safety of checkpoints (issue 12, part 4).

* ``atomic_savez`` names its temporary file after the writer's host and pid, fsyncs the file
  and its directory, and tidies the temporary files of dead writers (never a live one's);
* a training subprocess that writes a checkpoint after every step is SIGKILLed at random
  moments: the checkpoint on disk always loads (the old one or the new one, never torn), the
  step counter never goes back, and resuming from it reaches the same weights, bit for bit,
  as an uninterrupted run. A few trials here; ``pytest -m fuzz`` runs 50.
"""

import os
import random
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from cnncore import serialization
from cnncore.serialization import atomic_savez, load_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_kill_worker.py")

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX pids and signals")


def _temp_files(directory, base="ckpt.npz"):
    return sorted(n for n in os.listdir(directory) if n.startswith(base + ".tmp"))


def _temp_name(directory, pid, host=None, base="ckpt.npz"):
    host = serialization._host_tag() if host is None else host
    return os.path.join(directory, f"{base}.tmp.{host}.{pid}.deadbeef")


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------- atomic_savez
def test_temp_name_carries_host_and_pid(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(serialization.os, "replace", spy)
    atomic_savez(tmp_path / "ckpt.npz", {"a": np.arange(3)})
    host, pid, rand = seen[0][len("ckpt.npz.tmp."):].split(".")
    assert host == serialization._host_tag() and "." not in host
    assert int(pid) == os.getpid() and len(rand) == 8
    assert _temp_files(tmp_path) == []
    # the usual file mode (0666 less the umask), not mkstemp's 0600
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "ckpt.npz").st_mode) == 0o666 & ~mask


@posix_only
def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(serialization.os, "fsync", spy)
    atomic_savez(tmp_path / "ckpt.npz", {"a": np.arange(3)})
    assert synced == [False, True]  # the file before the rename, the directory after it


@posix_only
def test_next_save_tidies_dead_writers_temp_files(tmp_path):
    dead = [_temp_name(tmp_path, _dead_pid()) for _ in range(3)]
    for name in dead:
        with open(name, "wb") as f:
            f.write(b"half a checkpoint")
    atomic_savez(tmp_path / "ckpt.npz", {"a": np.arange(3)})
    assert _temp_files(tmp_path) == []
    np.testing.assert_array_equal(np.load(tmp_path / "ckpt.npz")["a"], np.arange(3))


@posix_only
def test_live_writers_and_foreign_temp_files_are_kept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [
            _temp_name(tmp_path, live.pid),                 # a live writer in another process
            _temp_name(tmp_path, os.getpid()),              # this process (another thread?)
            _temp_name(tmp_path, _dead_pid(), host="some-other-host"),  # pid means nothing here
            _temp_name(tmp_path, _dead_pid(), base="other.npz"),        # another file's
            os.path.join(tmp_path, "ckpt.npz.tmpab12cd34"),  # old mkstemp name: writer unknown
            os.path.join(tmp_path, "ckpt.npz.tmp.notes.txt"),
        ]
        for name in keep:
            open(name, "wb").close()
        atomic_savez(tmp_path / "ckpt.npz", {"a": np.arange(3)})
        assert sorted(os.listdir(tmp_path)) == sorted(
            ["ckpt.npz"] + [os.path.basename(n) for n in keep])
    finally:
        live.kill()
        live.wait()


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) in the middle of a save: the old checkpoint stays, whole,
    and no temporary file is left."""
    path = tmp_path / "ckpt.npz"
    atomic_savez(path, {"a": np.arange(3)})

    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(serialization.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_savez(path, {"a": np.arange(5)})
    assert _temp_files(tmp_path) == []
    np.testing.assert_array_equal(np.load(path)["a"], np.arange(3))


# ---------------------------------------------------------------------- kill trials
def _weights(trainer_or_model):
    model = getattr(trainer_or_model, "model", trainer_or_model)
    return {k: v.copy() for k, v in model.state_dict().items()}


def _kill_trials(tmp_path, trials, max_delay, seed):
    sys.path.insert(0, HERE)
    try:
        import _kill_worker
    finally:
        sys.path.remove(HERE)
    env = dict(os.environ, CNNCORE_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(
        serialization.__file__)), env.get("PYTHONPATH")] if p)
    rnd = random.Random(seed)
    ckpt = tmp_path / "ckpt.npz"
    last_step, killed, temp_seen = -1, 0, 0
    for _ in range(trials):
        p = subprocess.Popen([sys.executable, WORKER, str(tmp_path), str(10**6)],
                             stdout=subprocess.PIPE, env=env, text=True)
        try:
            assert p.stdout.readline().startswith("ready")
            time.sleep(rnd.uniform(0, max_delay))
            p.send_signal(signal.SIGKILL)
        finally:
            p.wait()
            p.stdout.close()
        killed += p.returncode == -signal.SIGKILL
        temp_seen += len(_temp_files(tmp_path))  # left by this kill (the next save tidies it)
        if not ckpt.exists():
            assert last_step == -1
            continue
        ck = load_checkpoint(ckpt)  # must never fail: old or new, never torn
        step = ck.trainer_state["global_step"]
        assert step >= last_step and step == ck.trainer_state["epoch"]
        last_step = step
    # finish the run without a kill, 10 steps further: it must tidy the temporary files the
    # kills left
    steps = last_step + 10
    left_by_kills = len(_temp_files(tmp_path))
    out = subprocess.run([sys.executable, WORKER, str(tmp_path), str(steps)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "done", out.stderr
    assert _temp_files(tmp_path) == []
    resumed = load_checkpoint(ckpt)
    assert resumed.trainer_state["global_step"] == steps
    # the uninterrupted run, in this process (no checkpoints)
    reference = _kill_worker.new_trainer()
    x, y = _kill_worker.data()
    reference.fit(x, y, epochs=steps, batch_size=len(x), verbose=0)
    want, got = _weights(reference), _weights(resumed.model)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    return {"trials": trials, "killed": killed, "last_step_before_finish": last_step,
            "kills_that_left_a_temp_file": temp_seen,
            "temp_files_at_the_end_before_the_last_save": left_by_kills}


@posix_only
def test_sigkill_during_training_leaves_a_loadable_checkpoint(tmp_path):
    stats = _kill_trials(tmp_path, trials=4, max_delay=0.4, seed=1)
    assert stats["killed"] == 4


@posix_only
@pytest.mark.fuzz
def test_sigkill_trials_long(tmp_path):
    """The long profile: 50 kills at random moments (``pytest -m fuzz``)."""
    stats = _kill_trials(tmp_path, trials=50, max_delay=0.5, seed=12)
    print("kill trials:", stats)
    assert stats["killed"] >= 50

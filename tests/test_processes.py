"""Processes and runtimes (issue 12, part 6).

* ``os.fork()`` after cnncore ran an OpenMP team: GNU OpenMP cannot start a team in the
  child (its first parallel region waits for threads that were not copied, for ever), so
  cnncore runs on one thread there. Without that guard the first test hangs.
* ``os.fork()`` while a :class:`cnncore.memory_pool` is active and other threads allocate
  from pools: the pools' locks are taken around ``fork()`` (``pthread_atfork``), so the
  child never inherits a lock held by a thread that does not exist in it.
* cnncore and PyTorch in one process, imported in either order (they share libgomp):
  results and thread counts stay right.

Each scenario runs in a subprocess with a timeout, so that a hang fails the test instead
of stalling the suite.
"""

import os
import subprocess
import sys
import textwrap

import pytest

posix_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

TIMEOUT = 120  # seconds for a whole scenario; each normally takes 1-3 s


def run_script(body, prelude="", timeout=TIMEOUT):
    """Run ``prelude`` and ``body`` (dedented) in a fresh interpreter; return its stdout.
    Fails on a non-zero exit or on a hang (timeout)."""
    code = prelude + textwrap.dedent(body)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ, CNNCORE_NUM_THREADS="2"))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the scenario hung (no exit in {timeout} s); stdout so far: "
                    f"{e.stdout!r}")
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


# Waits for a forked child with a deadline: exit code, or "hung" (the child is killed).
WAIT_CHILD = """
import os, time

def wait_child(pid, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"
"""


@posix_only
def test_fork_after_a_parallel_region_runs_single_threaded():
    out = run_script(prelude=WAIT_CHILD, body="""
    import numpy as np
    import cnncore
    import cnncore.functional as F
    from cnncore import reference as R

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    assert cnncore.get_num_threads() == 2
    y0 = F.conv2d(x, w, padding=1, n_threads=2)   # the parent starts a team of 2
    gy = rng.standard_normal(y0.shape).astype(np.float32)
    g0 = F.conv2d_backward(gy, x, w, padding=1, n_threads=2)
    pid = os.fork()
    if pid == 0:
        ok = cnncore.get_num_threads() == 1
        y = F.conv2d(x, w, padding=1, n_threads=2)  # asked for 2: runs on 1, same bits
        g = F.conv2d_backward(gy, x, w, padding=1)
        ok = ok and np.array_equal(y, y0) and all(np.array_equal(a, b) for a, b in zip(g, g0))
        os._exit(0 if ok else 3)
    print("child", wait_child(pid))
    # the parent keeps its threads
    assert cnncore.get_num_threads() == 2
    assert np.array_equal(F.conv2d(x, w, padding=1, n_threads=2), y0)
    np.testing.assert_allclose(y0, R.conv2d(x.astype(float), w.astype(float), padding=1),
                               rtol=1e-4, atol=1e-4)
    """)
    assert "child 0" in out, out


@posix_only
def test_multiprocessing_fork_workers_train_and_match():
    """The usual way users fork: a multiprocessing pool (fork start method) whose workers
    each run training steps after the parent did; every worker gets the parent's result."""
    out = run_script("""
    import multiprocessing as mp
    import numpy as np
    from cnncore.layers import Conv2d, Flatten, Linear, ReLU, Sequential
    from cnncore.losses import SoftmaxCrossEntropy
    from cnncore.optim import SGD
    from cnncore.trainer import Trainer

    def train(seed):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 3, 12, 12)).astype(np.float32)
        y = rng.integers(0, 4, 32)
        model = Sequential(Conv2d(3, 16, 3, padding=1), ReLU(), Flatten(),
                           Linear(16 * 144, 4)).initialize(seed)
        t = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), seed=0)
        t.fit(x, y, epochs=2, batch_size=8, verbose=0)
        return model.state_dict()["0.weight"].tolist()

    if __name__ == "__main__":
        want = [train(s) for s in range(3)]  # the parent trains first: its team exists
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map_async(train, range(3)).get(timeout=60)
        print("same" if got == want else "different")
    """)
    assert out.strip().endswith("same"), out


@posix_only
def test_fork_while_other_threads_use_memory_pools():
    """Threads allocate and free pooled arrays without pause while the main thread forks
    again and again inside its own pool; every child allocates through the inherited pool
    and exits. A lock inherited in the 'held' state would hang a child."""
    out = run_script(prelude=WAIT_CHILD, body="""
    import threading
    import numpy as np
    import cnncore

    stop = threading.Event()

    def churn():
        with cnncore.memory_pool(min_bytes=0):
            while not stop.is_set():
                a = [np.ones(n) for n in (8, 1 << 12, 1 << 15)]
                del a

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    results = []
    with cnncore.memory_pool(min_bytes=0) as pool:
        for _ in range(40):
            keep = np.ones(1 << 15)
            del keep  # a cached block of the main thread's pool
            pid = os.fork()
            if pid == 0:
                total = 0.0
                for _ in range(50):
                    total += float(np.ones(1 << 15).sum())
                os._exit(0 if total == 50 * (1 << 15) else 3)
            results.append(wait_child(pid))
    stop.set()
    for t in threads:
        t.join()
    print("children", sorted(set(map(str, results))), "hits", pool.stats()["hits"] > 0)
    """)
    assert "children ['0'] hits True" in out, out


torch_missing = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("torch") is None,
    reason="PyTorch is not installed (pip install torch)")


@torch_missing
@pytest.mark.parametrize("first", ["torch", "cnncore"])
def test_cnncore_and_torch_in_one_process(first):
    """Both libraries in one process (they load the same libgomp), imported in either
    order: each keeps its thread count, and a convolution agrees across the two."""
    second = "cnncore" if first == "torch" else "torch"
    out = run_script(f"""
    import {first}, {second}
    import numpy as np
    import torch, cnncore
    import cnncore.functional as F

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 24, 24)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    for _ in range(3):  # alternate the two libraries' parallel regions
        want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                          padding=1).numpy()
        ours = F.conv2d(x, w, padding=1, n_threads=2)
        np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)
        assert np.array_equal(ours, F.conv2d(x, w, padding=1, n_threads=1))
    print("threads", cnncore.get_num_threads(), torch.get_num_threads())
    """)
    assert "threads 2 2" in out, out

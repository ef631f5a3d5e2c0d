"""Data-parallel training on MPI (cnncore.distributed, Trainer(distributed=...)).

The 2-rank tests launch ``mpiexec -n 2 python _mpi_helper.py ...`` in a subprocess (each
with a timeout, so a hang fails the test instead of stalling CI); they skip, saying why,
when mpi4py or mpiexec is missing (``pip install "cnncore[mpi]"`` provides both).
"""

import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cnncore
import _mpi_helper as helper
from cnncore import Trainer
from cnncore.distributed import shard_bounds
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import SGD

HERE = Path(__file__).resolve().parent
HELPER = HERE / "_mpi_helper.py"
TIMEOUT = 120  # seconds for one mpiexec launch (a run takes 1-5 s)


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install \"cnncore[mpi]\")"
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's launcher
    exe = str(beside) if beside.exists() else shutil.which("mpiexec")
    if exe is None:
        return None, "no mpiexec on PATH or beside the Python executable (pip install mpich)"
    return exe, None


MPIEXEC, WHY = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason=f"2-rank MPI tests skipped: {WHY}")


def run_mpi(*args, ranks=2, env=None, check=True, module=None):
    """``mpiexec -n ranks python _mpi_helper.py args...`` (``python -m module args...``);
    returns (CompletedProcess, seconds)."""
    full_env = dict(os.environ, CNNCORE_NUM_THREADS="1", OMP_NUM_THREADS="1",
                    PYTHONPATH=os.pathsep.join(
                        [str(Path(cnncore.__file__).parent.parent), str(HERE),
                         os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    target = [str(HELPER)] if module is None else ["-m", module]
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, *target, *map(str, args)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
    elapsed = time.perf_counter() - start
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode})\nstdout:\n{out}\nstderr:\n{err}")
    return result, elapsed


def _rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-300)


# ------------------------------------------------------------------ without MPI
def test_shard_bounds_cover_in_rank_order():
    for n in (0, 1, 3, 7, 64):
        for size in (1, 2, 3, 5):
            parts = [shard_bounds(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(h - l for l, h in parts) - min(h - l for l, h in parts) <= 1


def test_sync_batchnorm_needs_distributed():
    model = helper.build(np.float64, True)
    with pytest.raises(ValueError, match="sync_batchnorm"):
        Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters()), sync_batchnorm=True)


def test_importing_cnncore_does_not_import_mpi4py():
    code = "import sys, cnncore, cnncore.distributed; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             [str(Path(cnncore.__file__).parent.parent), str(HERE)])))
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ 2 ranks
@needs_mpi
@pytest.mark.parametrize("dtype, bn, tol", [("float64", False, 1e-9), ("float32", False, 1e-5),
                                            ("float64", True, 1e-9), ("float32", True, 1e-5)])
def test_two_ranks_match_one_process(tmp_path, dtype, bn, tol):
    """Global batch 7 on 2 ranks (shards of 3 and 4, last batch 3 -> 1 and 2, a noise
    transform, validation, evaluate, predict) = batch 7 in one process; with BatchNorm,
    sync_batchnorm=True. Rank 1 starts from other weights (the broadcast fixes them). Both
    ranks end with bit-identical weights; a second launch repeats the first bit for bit."""
    runs = []
    for k in range(2 if dtype == "float64" else 1):
        out = tmp_path / f"run{k}"
        run_mpi("train", out, dtype, int(bn), int(bn))
        runs.append([dict(np.load(f"{out}.rank{r}.npz")) for r in range(2)])
    r0, r1 = runs[0]
    ref = helper.train(np.dtype(dtype), bn)
    assert set(r0) == set(ref)
    for key in ref:
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=f"{key}: ranks differ")
        assert _rel(r0[key], ref[key]) <= tol, (key, _rel(r0[key], ref[key]))
    assert int(r0["step"]) == 2 * 7
    for again in runs[1:]:  # determinism: bit-identical repeated launches
        for key in ref:
            np.testing.assert_array_equal(again[0][key], r0[key], err_msg=f"{key}: runs differ")


@needs_mpi
@pytest.mark.parametrize("bn", [False, True])
def test_overlapped_bucket_sums_give_the_same_bits(tmp_path, bn):
    """overlap=True with 256-byte buckets (sums started during backward, in bucket order)
    gives bit for bit the weights of the plain bucketed sum."""
    for overlap in (0, 1):
        run_mpi("train", tmp_path / f"o{overlap}", "float64", int(bn), int(bn), overlap)
    plain, over = (dict(np.load(tmp_path / f"o{k}.rank0.npz")) for k in (0, 1))
    for key in plain:
        np.testing.assert_array_equal(over[key], plain[key], err_msg=key)


@needs_mpi
def test_per_rank_batchnorm_statistics_by_default(tmp_path):
    """Without sync_batchnorm each rank normalises with its shard's statistics (PyTorch
    DDP's default): the result differs from one process but the ranks still agree."""
    out = tmp_path / "bn"
    run_mpi("train", out, "float64", 1, 0)
    r0, r1 = (dict(np.load(f"{out}.rank{r}.npz")) for r in range(2))
    ref = helper.train(np.float64, True)
    for key in ref:
        np.testing.assert_array_equal(r0[key], r1[key])
    assert _rel(r0["param.0.weight"], ref["param.0.weight"]) > 1e-6


@needs_mpi
def test_mnist_example_distributed_prints_once(tmp_path):
    """``mpiexec -n 2 python -m cnncore.examples.mnist --distributed`` (on a tiny fake
    MNIST): one summary, one epoch line, one ``test accuracy:`` line, one saved model."""
    from test_datasets import _tiny_dataset, _write_dataset

    data = tmp_path / "data"
    data.mkdir()
    _write_dataset(data, _tiny_dataset(5, n_train=256, n_test=64))
    res, _ = run_mpi("--distributed", "--epochs", "1", "--threads", "1", "--data", data,
                     "--out", tmp_path / "out", module="cnncore.examples.mnist")
    out = res.stdout
    assert out.count("test accuracy:") == 1, out
    assert out.count("Total params") == 1 and out.count("epoch 1/1 - ") == 1, out
    assert "1 threads on each of 2 ranks" in out
    assert (tmp_path / "out" / "lenet5_mnist.npz").exists()


@needs_mpi
def test_checkpoint_on_rank_zero_resume_on_every_rank(tmp_path):
    """ModelCheckpoint and CSVLogger run on rank 0 only (one header, one row); every rank
    resumes from the checkpoint and ends where an uninterrupted run ends, bit for bit."""
    res, _ = run_mpi("resume", tmp_path)
    assert "rank 0 resume ok" in res.stdout and "rank 1 resume ok" in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "log.csv"]
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch,loss"), rows


@needs_mpi
def test_nonfinite_gradient_on_one_rank_is_seen_by_every_rank_after_the_sum():
    """Rank 1's local gradient holds a NaN at batch 3 (finite loss). check_gradients runs on
    the summed gradients: with "warn" both ranks skip that step (rank 0 warns) and stay
    identical; with "raise" both ranks raise at that step, before updating."""
    res, _ = run_mpi("nangrad", "warn")
    for rank, warned in ((0, 1), (1, 0)):
        assert f"rank {rank} steps 6 skipped 1 warnings {warned}" in res.stdout, res.stdout
    assert "non-finite gradient at epoch 1, batch 3/7 (step 3) on rank 0: '4.weight' " \
        "(Linear) has 1 non-finite value of 320" in res.stdout, res.stdout
    res, _ = run_mpi("nangrad", "raise")
    for rank in (0, 1):
        assert f"rank {rank} raised TrainingDiverged: non-finite gradient at epoch 1, batch " \
            f"3/7 (step 3) on rank {rank}: '4.weight'" in res.stdout, res.stdout
        assert f"rank {rank} steps 2 skipped 0 warnings 0" in res.stdout, res.stdout


@needs_mpi
@pytest.mark.parametrize("bad_rank", [1, 0])
def test_failure_on_one_rank_stops_both(bad_rank):
    """A NaN sample in one rank's shard: that rank raises TrainingDiverged; the abort hook
    ends the job within seconds, the error named, instead of the other rank waiting in the
    gradient sum forever."""
    res, elapsed = run_mpi("fail", bad_rank, check=False)
    text = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"[rank {bad_rank}] cnncore.trainer.TrainingDiverged: loss is nan" in text, text
    assert f"on rank {bad_rank}" in text and "aborting all 2 ranks" in text
    assert "finished training" not in text
    assert elapsed < 60, f"took {elapsed:.1f} s to stop"


@needs_mpi
def test_two_ranks_loading_mnist_into_an_empty_cache(tmp_path):
    """Both ranks download the same (tiny, served on 127.0.0.1, slowed down so that the
    downloads overlap) MNIST files into one empty cache at once: both read correct data
    and the cache holds exactly the four checked files, no partial file."""
    from test_datasets import _serve, _tiny_dataset

    root = tmp_path / "www"
    root.mkdir()
    dataset = _tiny_dataset(3, n_train=200, n_test=50)
    checksums = _serve(root, dataset)
    (xtr, ytr), (xte, yte) = dataset
    np.savez(tmp_path / "expected.npz", xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    (tmp_path / "sums.json").write_text(json.dumps(checksums))
    requests = []

    class Slow(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            time.sleep(0.2)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Slow, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    cache = tmp_path / "cache"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        res, _ = run_mpi("mnist", url, tmp_path / "sums.json", tmp_path / "expected.npz",
                         env={"CNNCORE_CACHE": str(cache), "CNNCORE_DATA": ""})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert "rank 0 mnist ok" in res.stdout and "rank 1 mnist ok" in res.stdout
    files = sorted(p.name for p in (cache / "mnist").iterdir())
    assert files == sorted(checksums), files
    for name, (alg, digest) in checksums.items():
        assert hashlib.new(alg, (cache / "mnist" / name).read_bytes()).hexdigest() == digest
    assert len(requests) > 4, requests  # the ranks really downloaded at the same time

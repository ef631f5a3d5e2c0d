"""Run by tests/test_distributed.py under ``mpiexec -n 2 python _mpi_helper.py MODE ...``.

Modes
-----
train OUT DTYPE BN SYNC [OVERLAP]
    Train a small network for two epochs (global batch 7 on 45 samples: uneven shards,
    a last batch of 3, a noise transform), then evaluate and predict; every rank saves
    ``OUT.rank<r>.npz`` (weights, buffers, losses, evaluation, predictions).
fail RANK
    Training data with a NaN sample that lands on rank RANK's shard of batch 3: that rank
    raises TrainingDiverged while the other waits in the gradient sum.
nangrad CHECK
    Rank 1 alone leaves a NaN in its local gradient at batch 3 (the loss stays finite);
    ``Trainer(check_gradients=CHECK)`` must see it on every rank, after the gradient sum:
    "raise" raises on both ranks (each prints its error), "warn" skips the step on both
    (same weights). Also checks that fit leaves SIGINT's handler alone in distributed mode.
resume DIR
    Two epochs in one ``fit``, then one epoch with a ModelCheckpoint and a CSVLogger
    (rank 0 only) and a second one resumed on every rank with ``Trainer.from_checkpoint``:
    the weights must be the same, bit for bit.
mnist URL CHECKSUMS_JSON EXPECTED_NPZ
    Both ranks load MNIST at the same moment into the same empty cache ($CNNCORE_CACHE)
    from a local mirror.

``build``, ``data`` and ``train`` are imported by the test for the one-process reference.
"""

import json
import signal
import sys
import time
import warnings

import numpy as np

from cnncore import Trainer
from cnncore.trainer import TrainingDiverged
from cnncore.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from cnncore.losses import SoftmaxCrossEntropy
from cnncore.optim import SGD

N, BATCH, EPOCHS = 45, 7, 2


def build(dtype, bn, seed=0):
    layers = [Conv2d(1, 4, 3, padding=1, bias=not bn, dtype=dtype)]  # no bias before BN
    if bn:
        layers.append(BatchNorm2d(4, dtype=dtype))
    layers += [ReLU(), MaxPool2d(2), Flatten(), Linear(4 * 4 * 4, 5, dtype=dtype)]
    return Sequential(*layers).initialize(seed)


def data(dtype):
    rng = np.random.default_rng(42)
    x = rng.standard_normal((N, 1, 8, 8)).astype(dtype)
    y = rng.integers(0, 5, N)
    return x, y


def noise(xb, rng):
    return xb + (0.05 * rng.standard_normal(xb.shape)).astype(xb.dtype)


def train(dtype, bn, distributed=None, sync_batchnorm=False, init_seed=0):
    model = build(dtype, bn, seed=init_seed)
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.05, momentum=0.9),
                      seed=7, distributed=distributed, sync_batchnorm=sync_batchnorm)
    x, y = data(dtype)
    history = trainer.fit(x, y, epochs=EPOCHS, batch_size=BATCH, transform=noise, verbose=0,
                          validation_data=(x[:11], y[:11]))
    ev = trainer.evaluate(x, y, batch_size=4)
    pred = trainer.predict(x, batch_size=4)
    out = {"param." + k: v for k, v in model.state_dict().items()}
    out.update(loss=np.array(history["loss"]), val_loss=np.array(history["val_loss"]),
               eval=np.array([ev["loss"], ev["accuracy"]]), pred=pred,
               step=np.array(trainer.global_step))
    return out


def nan_gradient(check):
    from mpi4py import MPI
    from cnncore.callbacks import Callback
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    x, y = data(np.float64)
    model = build(np.float64, False)
    layer = model.named_layers()[-1][1]
    backward, calls = layer.backward, []

    def poisoned(grad_out):  # rank 1's share of batch 3 only
        out = backward(grad_out)
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            layer.weight.grad[0, 0] = np.nan
        return out
    layer.backward = poisoned

    # as in a terminal (a rank started in the background inherits SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    class SigintUntouched(Callback):
        def on_batch_end(self, trainer, batch, logs):
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.05),
                      distributed="mpi", check_gradients=check)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(x, y, epochs=1, batch_size=BATCH, shuffle=False, verbose=0,
                        callbacks=[SigintUntouched()])
        except TrainingDiverged as e:  # every rank must get here, at the same step
            print(f"rank {rank} raised {type(e).__name__}: {e}", flush=True)
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    digest = [float(v.sum()) for v in model.state_dict().values()]
    digests = comm.allgather(digest)
    assert digests[0] == digests[1], digests
    print(f"rank {rank} steps {trainer.global_step} skipped {trainer.skipped_steps} "
          f"warnings {len(caught)}: {[str(w.message) for w in caught]}", flush=True)


def main(argv):
    mode = argv[0]
    if mode == "train":
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank()
        out, dtype, bn, sync = argv[1], np.dtype(argv[2]), argv[3] == "1", argv[4] == "1"
        distributed = "mpi"
        if len(argv) > 5 and argv[5] == "1":  # small buckets, started during backward
            from cnncore.distributed import DistributedContext
            distributed = DistributedContext("mpi", bucket_bytes=256, overlap=True)
        # rank 1 starts from other weights: the broadcast from rank 0 must fix that
        res = train(dtype, bn, distributed=distributed, sync_batchnorm=sync,
                    init_seed=rank * 100)
        np.savez(f"{out}.rank{rank}.npz", **res)
    elif mode == "fail":
        from mpi4py import MPI
        rank, bad = MPI.COMM_WORLD.Get_rank(), int(argv[1])
        x, y = data(np.float64)
        # batch 3 (index 2) holds samples 14..20; rank 0 gets 14..16, rank 1 gets 17..20
        x[17 if bad == 1 else 14] = np.nan
        model = build(np.float64, False)
        trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.05),
                          distributed="mpi")
        print(f"rank {rank} starts at {time.time():.3f}", flush=True)
        trainer.fit(x, y, epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
        print(f"rank {rank} finished training (it should not)", flush=True)
    elif mode == "nangrad":
        nan_gradient(argv[1])
    elif mode == "resume":
        from mpi4py import MPI
        from cnncore.callbacks import CSVLogger, ModelCheckpoint
        comm, d = MPI.COMM_WORLD, argv[1]
        x, y = data(np.float64)

        def fresh():
            model = build(np.float64, False)
            return Trainer(model, SoftmaxCrossEntropy(),
                           SGD(model.parameters(), lr=0.05, momentum=0.9), seed=7,
                           distributed="mpi")
        straight = fresh()
        straight.fit(x, y, epochs=2, batch_size=BATCH, transform=noise, verbose=0)
        first = fresh()
        first.fit(x, y, epochs=1, batch_size=BATCH, transform=noise, verbose=0,
                  callbacks=[ModelCheckpoint(f"{d}/ck.npz"), CSVLogger(f"{d}/log.csv")])
        comm.Barrier()  # rank 0 has written the checkpoint
        resumed = Trainer.from_checkpoint(f"{d}/ck.npz", distributed="mpi")
        resumed.fit(x, y, epochs=1, batch_size=BATCH, transform=noise, verbose=0)
        for (name, a), b in zip(straight.model.state_dict().items(),
                                resumed.model.state_dict().values()):
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert resumed.epoch == 2 and resumed.global_step == straight.global_step
        print(f"rank {comm.Get_rank()} resume ok", flush=True)
    elif mode == "mnist":
        from mpi4py import MPI
        from cnncore.datasets import DownloadError, load_mnist
        from cnncore.datasets import _mnist
        comm = MPI.COMM_WORLD
        url, checksums, expected = argv[1], argv[2], argv[3]
        with open(checksums) as f:
            _mnist.MNIST_GZ_CHECKSUMS = {k: tuple(v) for k, v in json.load(f).items()}
        _mnist.MNIST_MIRRORS = [url]

        def no_pip(*args, **kwargs):
            raise DownloadError("pip download disabled in tests")
        _mnist._pip_download = no_pip
        comm.Barrier()  # both ranks start downloading together
        (xtr, ytr), (xte, yte) = load_mnist()
        ref = np.load(expected)
        for name, a in (("xtr", xtr), ("ytr", ytr), ("xte", xte), ("yte", yte)):
            np.testing.assert_array_equal(a, ref[name], err_msg=name)
        comm.Barrier()
        print(f"rank {comm.Get_rank()} mnist ok", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
